#!/usr/bin/env bash
# Generate the Python CRI stubs (prefetcher/adapters/cri_api) from proto/runtime/v1/api.proto.
#
# Usage: hack/gen-proto.sh [OUT_DIR]
#   OUT_DIR defaults to prefetcher/adapters/cri_api; tests/unit/test_proto_fresh.py passes a temp
#   dir and compares. PYTHON overrides the interpreter (default: .venv/bin/python).
#
# The output depends only on the proto file and the grpcio-tools version, so a second run gives
# byte-identical files. protoc writes an absolute import (`from runtime.v1 import api_pb2`) into
# the gRPC module; it is rewritten to a package-relative one so the stubs live inside prefetcher.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-"$root/prefetcher/adapters/cri_api"}
python=${PYTHON:-"$root/.venv/bin/python"}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Relative paths only, so no path of this machine ends up in the generated files.
(cd "$root/proto" && "$python" -m grpc_tools.protoc -I . \
    --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
    runtime/v1/api.proto)

gen="$tmp/runtime/v1"
sed -i 's/^from runtime\.v1 import api_pb2 as /from . import api_pb2 as /' "$gen/api_pb2_grpc.py"
if grep -q '^from runtime' "$gen/api_pb2_grpc.py" "$gen/api_pb2.py" "$gen/api_pb2.pyi"; then
    echo "gen-proto: an absolute runtime.v1 import survived the rewrite" >&2
    exit 1
fi
printf '"""Generated CRI runtime.v1 stubs (hack/gen-proto.sh); imported by prefetcher.adapters.cri only."""\n' \
    >"$gen/__init__.py"

mkdir -p "$out"
for f in __init__.py api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
    cp "$gen/$f" "$out/$f"
done
