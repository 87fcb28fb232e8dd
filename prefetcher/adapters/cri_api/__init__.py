"""Generated CRI runtime.v1 stubs (hack/gen-proto.sh); imported by prefetcher.adapters.cri only."""
