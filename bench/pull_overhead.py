"""What warming an image through ``prefetcher agent --once`` costs over a bare CRI ``PullImage``.

One 1 GiB modelcar (an uncompressed layer of random bytes) is pushed to a private registry; a
private containerd with its root on the real disk pulls it. After one unmeasured warm-up pull
(so the registry's blobs are in the page cache for every measured pull), the two ways alternate,
the image removed through CRI after each (containerd's CRI deletes content synchronously, which
the script checks):

* direct: ``CriImageRuntime.start_pull(ref).result()``, the floor any puller can reach;
* agent: ``python -m prefetcher agent --once`` on a models file naming the image, timed end to
  end (process start, imports, registry lookup, pull, the agent noticing the end of the pull) and,
  separately, the pull as the agent reports it ("prefetched ... in N s").

Medians over ``--rounds`` rounds; the order within a round alternates to share out drift.

    .venv/bin/python bench/pull_overhead.py [--rounds 3] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefetcher.adapters.cri import CriImageRuntime  # noqa: E402
from tests.support.containerd import RunningContainerd, start_containerd  # noqa: E402
from tests.support.oci import push_modelcar, push_sandbox_image  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

MIB = 1024**2
TARGET_RATIO = 1.05
PULL_TIMEOUT_SECONDS = 600
REPORTED = re.compile(r"prefetched \S+ on this node in ([0-9.]+)s")


def content_bytes(containerd: RunningContainerd) -> int:
    """Bytes of blobs in containerd's content store."""
    blobs = containerd.root / "io.containerd.content.v1.content" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file())


def remove(containerd: RunningContainerd, ref: str) -> None:
    """Remove the image and check its content is gone (else the next pull would be free)."""
    with CriImageRuntime(containerd.endpoint) as runtime:
        image = runtime.image_status(ref)
        if image is not None:
            runtime.remove_image(image.id)
    left = content_bytes(containerd)
    if left > 64 * MIB:
        raise RuntimeError(f"{left / MIB:.0f} MiB of content left after removing {ref}")


def direct(containerd: RunningContainerd, ref: str) -> float:
    with CriImageRuntime(containerd.endpoint) as runtime:
        started = time.monotonic()
        runtime.start_pull(ref, credentials=None, timeout_seconds=PULL_TIMEOUT_SECONDS).result(
            PULL_TIMEOUT_SECONDS
        )
        return time.monotonic() - started


def agent(workdir: Path, config: Path, models: Path) -> tuple[float, float]:
    """End-to-end seconds of ``agent --once`` and the pull seconds it reports."""
    (workdir / "state.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "prefetcher", "agent", "--config", str(config), "--models", str(models)]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--once"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PULL_TIMEOUT_SECONDS,
        check=False,
    )
    total = time.monotonic() - started
    found = REPORTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"agent --once exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return total, float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pull-overhead-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        registry = stack.enter_context(start_registry(workdir / "registry"))
        sandbox = push_sandbox_image(registry)
        containerd = stack.enter_context(
            start_containerd(workdir / "c", registry_host=registry.host, sandbox_image=sandbox.tag_ref)
        )
        started = time.monotonic()
        image = push_modelcar(registry, "bench/big", model_size_bytes=opts.size_mib * MIB, seed=1)
        print(f"pushed {image.size_bytes / MIB:.0f} MiB modelcar in {time.monotonic() - started:.1f}s")
        config, models = workdir / "agent.yaml", workdir / "models.yaml"
        config.write_text(
            json.dumps(
                {
                    "criEndpoint": containerd.endpoint,
                    "imageFsPath": str(containerd.root),
                    "stateFile": str(workdir / "state.json"),
                    "listenAddress": "127.0.0.1:0",
                    "registries": {"insecure": [registry.host]},
                }
            )
        )
        models.write_text(json.dumps({"models": [{"uri": image.uri}]}))
        print(f"warm-up pull: {direct(containerd, image.ref):.1f}s (not counted)")
        remove(containerd, image.ref)
        directs: list[float] = []
        totals: list[float] = []
        reported: list[float] = []
        for i in range(opts.rounds):
            for way in ("direct", "agent") if i % 2 == 0 else ("agent", "direct"):
                if way == "direct":
                    directs.append(direct(containerd, image.ref))
                    print(f"round {i + 1} direct CRI pull: {directs[-1]:.2f}s")
                else:
                    total, pull = agent(workdir, config, models)
                    totals.append(total)
                    reported.append(pull)
                    print(f"round {i + 1} agent --once: {total:.2f}s end to end, pull reported {pull:.1f}s")
                remove(containerd, image.ref)
    d, t, r = statistics.median(directs), statistics.median(totals), statistics.median(reported)
    print(f"median direct CRI pull:            {d:.2f}s")
    print(f"median agent --once, end to end:   {t:.2f}s  ratio {t / d:.3f}")
    print(f"median agent-reported pull time:   {r:.2f}s  ratio {r / d:.3f}")
    verdict = "met" if t / d <= TARGET_RATIO else "MISSED"
    print(f"target end-to-end ratio <= {TARGET_RATIO}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
