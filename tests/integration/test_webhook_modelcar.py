"""The injected shell commands, run for real: busybox ``sh`` in a chroot as the modelcar uid.

Each command is first expanded as kubelet expands a pod spec's ``command`` (``$$`` to ``$``,
``$(VAR)`` to its value). A chroot gives the process a root filesystem holding ``/models``, and
``/proc/<pid>/root`` of a chrooted process is that directory, so the link the modelcar makes
resolves from the host exactly as it does from the server container of a pod.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefetcher.webhook.containers import INIT_COMMAND, LINK_ENV, MODELCAR_COMMAND, STARTUP_PROBE_COMMAND
from tests.support.polling import eventually

UID = 1010
CHROOT, UNSHARE, SETPRIV = (
    shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") for tool in ("chroot", "unshare", "setpriv")
)
pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _requirements() -> None:
    """Missing parts fail loudly: a test that skips in CI proves nothing."""
    if os.geteuid() != 0:
        pytest.fail("chroot and uid changes need root")
    if not Path("/usr/bin/busybox").exists():
        pytest.fail("needs /usr/bin/busybox: apt-get install busybox-static")
    if None in (CHROOT, UNSHARE, SETPRIV):
        pytest.fail("needs chroot (coreutils), unshare and setpriv (util-linux)")

DEADLINE_SECONDS = 10.0
KSERVE_UPSTREAM_COMMAND = ("sh", "-c", "ln -sf /proc/$$$$/root/models /mnt/models && sleep infinity")


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``command``/``args``: ``$$`` escapes, ``$(VAR)`` references."""
    pattern = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return pattern.sub(substitute, text)


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A model image's root filesystem: busybox, ``/models`` with a file, an 0777 ``/mnt``."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        root = Path(directory)
        root.chmod(0o755)  # readers run as the modelcar uid
        (root / "bin").mkdir()
        shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
        for applet in ("sh", "ln", "sleep", "ls", "cat"):
            (root / "bin" / applet).symlink_to("busybox")
        (root / "models").mkdir()
        (root / "models" / "config.json").write_text('{"layers": 2}\n')
        (root / "mnt").mkdir()
        (root / "mnt").chmod(0o777)  # as kubelet creates an emptyDir
        (root / "dev").mkdir()
        # A runtime always provides /dev/null; the shell opens it for a background job's stdin.
        os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (root / "dev" / "null").chmod(0o666)
        yield root


def run_in_image(root: Path, command: tuple[str, ...], *, uid: int = UID) -> subprocess.Popen[bytes]:
    env = {"PATH": "/bin", LINK_ENV: "/mnt/models"}
    argv = [kubelet_expand(part, env) for part in command]
    return subprocess.Popen(
        [str(CHROOT), f"--userspec={uid}:{uid}", str(root), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def probe_as(uid: int, link: Path, gid: int | None = None) -> int:
    """The native sidecar's startup probe, run by ``uid``:``gid`` against the link seen from outside."""
    group = uid if gid is None else gid
    argv = [str(SETPRIV), f"--reuid={uid}", f"--regid={group}", "--clear-groups", *STARTUP_PROBE_COMMAND]
    return subprocess.run(argv, env={"PATH": "/usr/bin:/bin", LINK_ENV: str(link)}, check=False).returncode


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def test_modelcar_links_the_model_and_exits_at_once_on_sigterm(image_root: Path) -> None:
    link = image_root / "mnt" / "models"
    process = run_in_image(image_root, MODELCAR_COMMAND)
    try:
        eventually(link.is_symlink, what="the modelcar's link")
        assert os.readlink(link) == f"/proc/{process.pid}/root/models"
        eventually(lambda: probe_as(UID, link) == 0, what="the startup probe to pass")
        assert (link / "config.json").read_text() == '{"layers": 2}\n'
        # Only the modelcar's uid *and* gid may follow /proc/<pid>/root: why the server shares both.
        assert probe_as(UID + 1, link) != 0
        assert probe_as(UID, link, gid=0) != 0
        (sleeper,) = children(process.pid)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_SECONDS) == 0
        assert time.monotonic() - started < 2
        eventually(lambda: not Path(f"/proc/{sleeper}").exists(), what="the background sleep to end")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_the_startup_probe_fails_until_the_link_exists(image_root: Path) -> None:
    assert probe_as(UID, image_root / "mnt" / "models") != 0


def _pid1(root: Path, command: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``command`` as PID 1 of a new PID namespace (a container not sharing its pod's)."""
    env = {"PATH": "/bin", LINK_ENV: "/mnt/models"}
    argv = [kubelet_expand(part, env) for part in command]
    unshare = subprocess.Popen(
        [str(UNSHARE), "--pid", "--fork", str(CHROOT), f"--userspec={UID}:{UID}", str(root), *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    eventually(lambda: children(unshare.pid), until=bool, what="the namespaced shell")
    (shell,) = children(unshare.pid)
    # Signal only once `sleep` runs (as the shell's child, or in its place when the shell execs
    # its last command): by then our command has set its trap.
    eventually(
        lambda: children(shell) or Path(f"/proc/{shell}/comm").read_text() == "sleep\n",
        until=bool,
        what="sleep",
    )
    return unshare, shell


@pytest.mark.parametrize(
    ("command", "exits"),
    [(MODELCAR_COMMAND, True), (KSERVE_UPSTREAM_COMMAND, False)],
    ids=["ours", "upstream"],
)
def test_sigterm_as_pid_1(image_root: Path, command: tuple[str, ...], exits: bool) -> None:
    unshare, shell = _pid1(image_root, command)
    try:
        os.kill(shell, signal.SIGTERM)
        if exits:
            assert unshare.wait(timeout=DEADLINE_SECONDS) == 0
        else:  # PID 1 without a handler ignores SIGTERM: kubelet waits out the grace period
            with pytest.raises(subprocess.TimeoutExpired):
                unshare.wait(timeout=1)
    finally:
        if unshare.poll() is None:
            os.kill(shell, signal.SIGKILL)  # delivered even to a namespace's PID 1
            unshare.wait(timeout=DEADLINE_SECONDS)


@pytest.mark.parametrize(
    ("models", "code", "says"),
    [("full", 0, b"OK: /models is present"), ("empty", 1, b"NOK"), ("missing", 1, b"NOK")],
)
def test_init_container_checks_the_model_directory(
    image_root: Path, models: str, code: int, says: bytes
) -> None:
    if models != "full":
        shutil.rmtree(image_root / "models")
    if models == "empty":
        (image_root / "models").mkdir()
    process = run_in_image(image_root, INIT_COMMAND)
    output, _ = process.communicate(timeout=DEADLINE_SECONDS)
    assert process.returncode == code and output.startswith(says), output


def test_kubelet_expansion_helper() -> None:
    assert kubelet_expand("a $$$$ $$(x) $(A) $(B) $HOME $!", {"A": "1"}) == "a $$ $(x) 1 $(B) $HOME $!"
