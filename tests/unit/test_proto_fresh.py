"""The committed CRI stubs are exactly what hack/gen-proto.sh generates from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "prefetcher" / "adapters" / "cri_api"
FILES = ("__init__.py", "api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "hack" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, COMMITTED, FILES, shallow=False)
    assert not errors, f"missing generated or committed files: {errors}"
    assert not mismatch, f"stale stubs {mismatch}: run hack/gen-proto.sh and commit the result"


def test_grpc_module_imports_the_messages_package_relatively() -> None:
    text = (COMMITTED / "api_pb2_grpc.py").read_text()
    assert "from . import api_pb2 as" in text
    assert "from runtime" not in text
