"""Test support: the agent's container image, built from the project's Dockerfile.

``build_agent_image`` runs ``hack/agent-image.sh`` (buildah, no daemon) against a test registry:
the script pushes its bootstrapped Debian base there as ``library/debian:bookworm-slim``, builds
the unmodified Dockerfile with ``docker.io`` relocated to that registry, and pushes the image as
``modelcar-prefetcher:<tag>``. The base and buildah's layer cache live in the user's cache
directory, so only the first build on a machine is slow (see the script). The session fixture
``agent_image`` builds once into the session ``registry``, which the session ``containerd`` pulls
from; manifests that deploy the agent use ``agent_image.ref``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.registry import RunningRegistry

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "agent-image.sh"
REPOSITORY = "modelcar-prefetcher"
# Below pytest's per-test timeout, so that a build that hangs fails with its log. A cold build
# (bootstrap, apt-get and pip inside the build) took 2 to 3 minutes on 2 cores, a warm one 12 s.
BUILD_TIMEOUT_SECONDS = 540.0
TOOLS: Mapping[str, str] = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "flock": "util-linux"}


@dataclass(frozen=True)
class AgentImage:
    """The agent image in a registry: ``ref`` is ``HOST:PORT/modelcar-prefetcher@sha256:…``."""

    ref: str
    tag_ref: str
    repository: str
    digest: str
    build_seconds: float
    log_file: Path


def require_tools() -> None:
    """Fail (never skip) naming the Debian package of a missing tool, or when not root."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install the Debian package {package!r} (make deps)")
    if os.geteuid() != 0:
        pytest.fail("building the agent image needs root (mmdebstrap and buildah run as root)")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the build's process group (buildah removes its working containers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=15)
            return


def build_agent_image(registry: RunningRegistry, log_file: Path, *, tag: str = "test") -> AgentImage:
    """Build the image from the working tree and push it to ``registry`` (plain HTTP)."""
    require_tools()
    tag_ref = f"{registry.host}/{REPOSITORY}:{tag}"
    command = ["bash", str(SCRIPT), "--base-registry", registry.host, "--push", tag_ref]
    start = time.monotonic()
    with log_file.open("wb") as log:
        # A session of its own: on timeout the whole build (buildah, its RUN steps) is stopped.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=BUILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            pytest.fail(f"{SCRIPT.name} took over {BUILD_TIMEOUT_SECONDS}s; log:\n{_tail(log_file)}")
    if proc.returncode != 0:
        pytest.fail(f"{SCRIPT.name} exited {proc.returncode}; log ({log_file}):\n{_tail(log_file)}")
    ref = out.decode().strip()
    repository, _, digest = ref.partition("@")
    if repository != f"{registry.host}/{REPOSITORY}" or not digest.startswith("sha256:"):
        pytest.fail(f"{SCRIPT.name} printed {ref!r}, not {registry.host}/{REPOSITORY}@sha256:…")
    return AgentImage(
        ref=ref,
        tag_ref=tag_ref,
        repository=REPOSITORY,
        digest=digest,
        build_seconds=time.monotonic() - start,
        log_file=log_file,
    )


@pytest.fixture(scope="session")
def agent_image(tmp_path_factory: pytest.TempPathFactory, registry: RunningRegistry) -> AgentImage:
    """The agent image built from this tree, in the session ``registry`` (built once a session)."""
    return build_agent_image(registry, tmp_path_factory.mktemp("agent-image") / "build.log")
