"""Start-up of a modelcar pod with its image already on the node (warm) and without it (cold).

A private registry and containerd (root on the real disk) and KServe's modelcar wiring through
raw CRI, as kubelet drives it: ``RunPodSandbox`` with one PID namespace for the pod; pull the
modelcar image if absent (``PullImage``, as kubelet's IfNotPresent); the ``modelcar`` container
(the model image, uid 1010, ``sh -c 'ln -sf /proc/$$/root/models /mnt/ && sleep infinity'``, a
0777 host directory at ``/mnt``); then a server container (busybox, uid 1010) that polls every
10 ms until ``/mnt/models/model.bin`` is readable through the link and exits 0.

The time is from just before ``RunPodSandbox`` to the server's exit as containerd records it
(``finished_at``). The sandbox and server images are present in both cases; only the modelcar image
differs: removed through CRI before a cold start, left in place for the warm start that follows.
Models of 256 MiB and 1 GiB (uncompressed random layers); medians over ``--rounds`` rounds.

    .venv/bin/python bench/warm_cold.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefetcher.adapters.cri import CriImageRuntime  # noqa: E402
from prefetcher.adapters.cri_api import api_pb2 as cri  # noqa: E402
from tests.support.containerd import start_containerd  # noqa: E402
from tests.support.oci import MODEL_FILE, push_modelcar, push_sandbox_image  # noqa: E402
from tests.support.pods import ContainerSpec, CriPods, Mount  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

MIB = 1024**2
MODELCAR_UID = 1010
MODELCAR_COMMAND = ("sh", "-c", "ln -sf /proc/$$/root/models /mnt/ && sleep infinity")
SERVER_COMMAND = ("sh", "-c", f"until test -r /mnt/models/{MODEL_FILE}; do sleep 0.01; done")
PULL_TIMEOUT_SECONDS = 600
SIZES_MIB = (256, 1024)


def start_pod(pods: CriPods, model_ref: str, server_image: str, mnt: Path) -> float:
    """Seconds from creating the pod to the server having read access to the model."""
    started_ns = time.time_ns()
    with pods.sandbox("bench-isvc", share_pid=True) as sandbox:
        status = pods.call("ImageStatus", cri.ImageStatusRequest(image=cri.ImageSpec(image=model_ref)))
        if not status.HasField("image"):
            pull = cri.PullImageRequest(image=cri.ImageSpec(image=model_ref))
            pods.call("PullImage", pull, timeout=PULL_TIMEOUT_SECONDS)
        mounts = [Mount(mnt, "/mnt")]
        sandbox.start(
            ContainerSpec(
                "modelcar", model_ref, command=MODELCAR_COMMAND, run_as_user=MODELCAR_UID, mounts=mounts
            )
        )
        server = sandbox.start(
            ContainerSpec(
                "kserve-container",
                server_image,
                command=SERVER_COMMAND,
                run_as_user=MODELCAR_UID,
                mounts=mounts,
            )
        )
        code = sandbox.wait_exited(server, timeout_seconds=120)
        if code != 0:
            raise RuntimeError(f"server exited {code}: {sandbox.logs(server)!r}")
        return (sandbox.status(server).finished_at - started_ns) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-warm-cold-"))
    results: dict[int, tuple[list[float], list[float]]] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        registry = stack.enter_context(start_registry(workdir / "registry"))
        sandbox_image = push_sandbox_image(registry)
        server_image = push_sandbox_image(registry, repository="bench/server", tag="v1").ref
        containerd = stack.enter_context(
            start_containerd(workdir / "c", registry_host=registry.host, sandbox_image=sandbox_image.tag_ref)
        )
        pods = stack.enter_context(CriPods(containerd.endpoint, log_root=workdir / "logs"))
        runtime = stack.enter_context(CriImageRuntime(containerd.endpoint))
        pods.ensure_image(sandbox_image.tag_ref)
        pods.ensure_image(server_image)
        runs = 0
        for size in SIZES_MIB:
            started = time.monotonic()
            model = push_modelcar(registry, f"bench/m{size}", model_size_bytes=size * MIB, seed=size)
            print(f"pushed {size} MiB modelcar in {time.monotonic() - started:.1f}s")
            colds, warms = results.setdefault(size, ([], []))
            for i in range(opts.rounds):
                if (image := runtime.image_status(model.ref)) is not None:
                    runtime.remove_image(image.id)
                for timings in (colds, warms):
                    runs += 1
                    mnt = workdir / f"mnt{runs}"
                    mnt.mkdir()
                    mnt.chmod(0o777)  # kubelet creates emptyDirs 0777; ln as uid 1010 writes here
                    timings.append(start_pod(pods, model.ref, server_image, mnt))
                print(f"{size} MiB round {i + 1}: cold {colds[-1]:.2f}s, warm {warms[-1]:.2f}s")
            if (image := runtime.image_status(model.ref)) is not None:
                runtime.remove_image(image.id)
    print("size      cold (median)   warm (median)   warm/cold")
    for size, (colds, warms) in results.items():
        cold, warm = statistics.median(colds), statistics.median(warms)
        print(f"{size:5d} MiB  {cold:10.2f}s  {warm:12.2f}s  {warm / cold:10.3f}")
    small, large = (statistics.median(results[s][1]) for s in SIZES_MIB)
    print(f"warm start 1 GiB / 256 MiB: {large / small:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
