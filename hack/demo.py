"""The agent on an embedded default, on this machine, in a minute.

Starts a private OCI registry and a private containerd (its image store on a 192 MiB tmpfs), builds
three sample modelcars (busybox + random "weights") and pushes them, then shows what the agent
plans and what it does: the two high-priority models are pulled by digest, the third does not fit
the 60 % budget and is skipped with the figures. Nothing outside a temp dir is touched. Needs root
(containerd and tmpfs), like the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.containerd import start_containerd
from tests.support.oci import push_modelcar, push_sandbox_image
from tests.support.registry import start_registry

MIB = 1024**2


def prefetcher(*args: str) -> int:
    """Run the real CLI and show its output."""
    print(f"\n$ prefetcher {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "prefetcher", *args], check=False).returncode


def main() -> int:
    """Set up, plan, run once, show the image store."""
    with tempfile.TemporaryDirectory(prefix="prefetcher-demo-") as tmp:
        work = Path(tmp)
        with start_registry(work / "registry") as registry:
            print(f"registry on {registry.url}; building sample modelcars…", flush=True)
            models = [
                (push_modelcar(registry, "demo/llama-tiny", model_size_bytes=24 * MIB, seed=1), 20),
                (push_modelcar(registry, "demo/bert-small", model_size_bytes=16 * MIB, seed=2), 10),
                (push_modelcar(registry, "demo/whisper-big", model_size_bytes=48 * MIB, seed=3), 1),
            ]
            sandbox = push_sandbox_image(registry)
            with start_containerd(work / "containerd", registry_host=registry.host,
                                  sandbox_image=sandbox.tag_ref, root_size_mb=192) as containerd:
                config = work / "agent.yaml"
                config.write_text(json.dumps({
                    "criEndpoint": containerd.endpoint,
                    "imageFsPath": str(containerd.root),
                    "stateFile": str(work / "state.json"),
                    "listenAddress": "127.0.0.1:0",
                    "budget": {"maxUsagePercent": 60},
                    "registries": {"insecure": [registry.host]},
                }, indent=1))
                listing = work / "models.yaml"
                listing.write_text(json.dumps({"models": [{"uri": m.uri, "priority": p} for m, p in models]}))
                print(f"containerd on {containerd.endpoint}, image store on a 192 MiB tmpfs")
                prefetcher("plan", "--config", str(config), "--models", str(listing))
                code = prefetcher("agent", "--config", str(config), "--models", str(listing), "--once")
                print("\nimage store now holds:")
                from prefetcher.adapters.cri import CriImageRuntime  # noqa: PLC0415 - after the path set-up

                with CriImageRuntime(containerd.endpoint) as runtime:
                    for image in runtime.list_images():
                        print(f"  {', '.join(sorted(image.refs))}  ({image.size_bytes / MIB:.1f} MiB)")
                print(f"\nagent exit code: {code} (0: every model warm or skipped for a stated reason)")
                return code


if __name__ == "__main__":
    sys.exit(main())
