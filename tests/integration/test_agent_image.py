"""The agent image built from the Dockerfile: in the registry, configured as documented, and runnable
through CRI on a real containerd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefetcher import __version__
from tests.support.agent_image import AgentImage
from tests.support.containerd import RunningContainerd
from tests.support.oci import OCI_MANIFEST, get_manifest, host_platform
from tests.support.pods import ContainerSpec, CriPods
from tests.support.registry import RegistryClient, RunningRegistry

pytestmark = pytest.mark.integration

RUN_TIMEOUT_SECONDS = 60.0
NONROOT_UID = 65532


def _config(registry: RunningRegistry, image: AgentImage) -> dict[str, object]:
    body, media_type, digest = get_manifest(registry, image.repository, image.digest)
    assert (media_type, digest) == (OCI_MANIFEST, image.digest)
    config_digest = json.loads(body)["config"]["digest"]
    answer = RegistryClient(registry).request(
        "GET", f"/v2/{image.repository}/blobs/{config_digest}", scope=f"repository:{image.repository}:pull"
    )
    assert answer.status == 200, answer.body[:200]
    config: dict[str, object] = json.loads(answer.body)
    return config


def _run(containerd: RunningContainerd, log_root: Path, spec: ContainerSpec) -> tuple[int, str]:
    """Run ``spec`` to completion in a host-network pod: its exit code and output."""
    with CriPods(containerd.endpoint, log_root=log_root) as pods, pods.sandbox(spec.name) as sandbox:
        container = sandbox.start(spec)
        code = sandbox.wait_exited(container, timeout_seconds=RUN_TIMEOUT_SECONDS)
        return code, sandbox.logs(container)


def test_the_tag_names_the_built_digest(agent_image: AgentImage, registry: RunningRegistry) -> None:
    _, _, digest = get_manifest(registry, agent_image.repository, agent_image.tag_ref.rsplit(":", 1)[1])
    assert digest == agent_image.digest


def test_the_config_runs_prefetcher_as_nonroot(agent_image: AgentImage, registry: RunningRegistry) -> None:
    config = _config(registry, agent_image)
    assert f"{config['os']}/{config['architecture']}" == host_platform()
    runtime = config["config"]
    assert isinstance(runtime, dict)
    assert runtime["User"] == f"{NONROOT_UID}:{NONROOT_UID}"
    assert runtime["Entrypoint"] == ["prefetcher"]
    assert runtime["Cmd"][0] == "agent"
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime["Env"]


def test_prefetcher_version_runs_in_containerd(
    agent_image: AgentImage, containerd: RunningContainerd, tmp_path: Path
) -> None:
    spec = ContainerSpec(name="agent-version", image=agent_image.ref, args=["version"])
    code, output = _run(containerd, tmp_path, spec)
    assert (code, output) == (0, f"prefetcher {__version__}\n")


def test_the_image_holds_no_pip_compilers_or_benchmark_tools(
    agent_image: AgentImage, containerd: RunningContainerd, tmp_path: Path
) -> None:
    # The venv's python3 comes first on PATH; /usr/bin/python3 is Debian's. psutil is bench/'s alone.
    script = (
        "id -u; "
        "python3 -c 'import pip' 2>&1 | tail -n 1; "
        "/usr/bin/python3 -c 'import pip' 2>&1 | tail -n 1; "
        "python3 -c 'import psutil' 2>&1 | tail -n 1; "
        "for tool in pip pip3 gcc cc c++ make; do command -v $tool || echo no $tool; done"
    )
    spec = ContainerSpec(name="agent-contents", image=agent_image.ref, command=["sh", "-c", script])
    code, output = _run(containerd, tmp_path, spec)
    no_pip = "ModuleNotFoundError: No module named 'pip'"
    no_psutil = "ModuleNotFoundError: No module named 'psutil'"
    tools = [f"no {tool}" for tool in ("pip", "pip3", "gcc", "cc", "c++", "make")]
    assert (code, output.splitlines()) == (0, [str(NONROOT_UID), no_pip, no_pip, no_psutil, *tools])
