"""KServe's modelcar wiring, reproduced through CRI alone on a real containerd.

The pod KServe builds (see docs/kserve-compat): one PID namespace for the pod, a ``modelcar``
sidecar running the model image that links ``/proc/<its pid>/root/models`` into a shared ``/mnt``
emptyDir, and a serving container reading ``/mnt/models``. Both run as the modelcar uid (1010);
the emptyDir is a 0777 host directory, as kubelet creates it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import RunningContainerd
from tests.support.oci import PushedImage, push_modelcar, push_sandbox_image
from tests.support.pods import ContainerSpec, CriPods, Mount, Sandbox
from tests.support.polling import eventually
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.integration

MODELCAR_UID = 1010
# KServe's sidecar command as the shell sees it (kubelet turns the pod spec's `$$$$` into `$$`).
MODELCAR_COMMAND = ("sh", "-c", "ln -sf /proc/$$/root/models /mnt/ && sleep infinity")
MODEL_FILE = "config.json"
MODEL_CONTENT = b'{"model": "wiring", "layers": 12}\n'


@pytest.fixture(scope="module")
def model(registry: RunningRegistry) -> PushedImage:
    return push_modelcar(registry, "wiring/model", files={MODEL_FILE: MODEL_CONTENT})


@pytest.fixture(scope="module")
def server_image(registry: RunningRegistry) -> str:
    """A busybox image without any model: what it prints can only come through the link."""
    return push_sandbox_image(registry, repository="wiring/server", tag="v1").ref


@pytest.fixture
def pods(containerd: RunningContainerd, tmp_path: Path) -> Iterator[CriPods]:
    with CriPods(containerd.endpoint, log_root=tmp_path / "logs") as client:
        yield client


def _emptydir(tmp_path: Path) -> Path:
    """A host directory standing in for the ``kserve-provision-location`` emptyDir."""
    path = tmp_path / "kserve-provision-location"
    path.mkdir()
    path.chmod(0o777)  # kubelet creates emptyDirs 0777; ln as uid 1010 needs to write here
    return path


def _start_modelcar(sandbox: Sandbox, model: PushedImage, mnt: Path) -> None:
    modelcar = sandbox.start(
        ContainerSpec(
            "modelcar",
            model.ref,
            command=MODELCAR_COMMAND,
            run_as_user=MODELCAR_UID,
            mounts=[Mount(mnt, "/mnt")],
        )
    )
    sandbox.wait_running(modelcar)
    eventually(
        (mnt / "models").is_symlink,
        timeout_seconds=30,
        what=f"the modelcar to link /mnt/models (log: {sandbox.logs(modelcar)!r})",
    )


def _serve(sandbox: Sandbox, image: str, mnt: Path, *, uid: int) -> tuple[int, str]:
    """Run a server that prints the model file; its exit code and output."""
    server = sandbox.start(
        ContainerSpec(
            "kserve-container",
            image,
            command=("cat", f"/mnt/models/{MODEL_FILE}"),
            run_as_user=uid,
            mounts=[Mount(mnt, "/mnt")],
        )
    )
    return sandbox.wait_exited(server), sandbox.logs(server)


def test_server_reads_the_model_through_the_modelcar_link(
    pods: CriPods, model: PushedImage, server_image: str, tmp_path: Path
) -> None:
    mnt = _emptydir(tmp_path)
    with pods.sandbox("isvc-predictor", share_pid=True) as sandbox:
        _start_modelcar(sandbox, model, mnt)

        exit_code, output = _serve(sandbox, server_image, mnt, uid=MODELCAR_UID)

    assert exit_code == 0, output
    assert output.encode() == MODEL_CONTENT
    link = (mnt / "models").readlink()
    assert link.parts[:2] == ("/", "proc")
    assert link.parts[3:] == ("root", "models")
    assert link.parts[2] != "1"  # pid 1 of a shared namespace is the sandbox's pause process


def test_a_server_with_another_uid_cannot_follow_the_link(
    pods: CriPods, model: PushedImage, server_image: str, tmp_path: Path
) -> None:
    mnt = _emptydir(tmp_path)
    with pods.sandbox("isvc-other-uid", share_pid=True) as sandbox:
        _start_modelcar(sandbox, model, mnt)

        exit_code, output = _serve(sandbox, server_image, mnt, uid=MODELCAR_UID + 1)

    assert exit_code != 0
    assert "Permission denied" in output


def test_without_a_shared_pid_namespace_the_link_dangles(
    pods: CriPods, model: PushedImage, server_image: str, tmp_path: Path
) -> None:
    # In a PID namespace of its own the sidecar is pid 1, so the link names /proc/1/root/models:
    # in the server's namespace that is the server itself, whose image holds no model.
    mnt = _emptydir(tmp_path)
    with pods.sandbox("isvc-no-share", share_pid=False) as sandbox:
        _start_modelcar(sandbox, model, mnt)

        exit_code, output = _serve(sandbox, server_image, mnt, uid=MODELCAR_UID)

    assert (mnt / "models").readlink() == Path("/proc/1/root/models")
    assert exit_code != 0
    assert "No such file or directory" in output
