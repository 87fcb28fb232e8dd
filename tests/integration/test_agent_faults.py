"""The agent against its own files, its neighbours and its registries: real processes, real faults.

Each test runs the real CLI as a process against a real containerd and a real registry and injects
one fault the way it happens on a node: bytes written into a file the agent watches, a state file
edited or corrupted, a second agent on the same state, a manifest whose sizes lie (pushed to the
registry, which stores what it is given), fifty copies of one failing model, containerd restarted
while a layer is half fetched (a proxy holds the blob), SIGTERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefetcher.adapters.cri import CriImageRuntime
from tests.support.agent_process import AgentProcess
from tests.support.containerd import ContainerdFactory, RunningContainerd
from tests.support.oci import OCI_MANIFEST, PushedImage, get_manifest, push_manifest, push_modelcar
from tests.support.pods import CriPods
from tests.support.registry import RegistryClient, RunningRegistry, free_port
from tests.support.registry_proxy import gated_proxy

pytestmark = pytest.mark.integration
MIB = 1024**2
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Node:
    """A containerd, the registries the agent may use, and the agent's files under ``workdir``."""

    containerd: RunningContainerd
    registry: RunningRegistry
    workdir: Path

    @property
    def state(self) -> Path:
        return self.workdir / "state.json"

    def config(self, name: str = "agent.yaml", **overrides: Any) -> Path:
        settings: dict[str, Any] = {
            "criEndpoint": self.containerd.endpoint,
            "imageFsPath": str(self.containerd.root),
            "stateFile": str(self.state),
            "listenAddress": f"127.0.0.1:{free_port()}",
            "resyncSeconds": 1,
            "eviction": {"graceSeconds": 0},
            "pull": {"stallSeconds": 60, "backoffBaseSeconds": 1, "backoffMaxSeconds": 2},
            "registries": {"insecure": [self.registry.host], "timeoutSeconds": 10},
        }
        for key, value in overrides.items():
            settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
        path = self.workdir / name
        path.write_text(json.dumps(settings))
        return path

    def models(self, *uris: str, priorities: tuple[int, ...] = ()) -> Path:
        path = self.workdir / "models.yaml"
        levels = priorities or (0,) * len(uris)
        entries = [{"uri": u, "priority": p} for u, p in zip(uris, levels, strict=True)]
        path.write_text(json.dumps({"models": entries}))
        return path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "prefetcher", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    def once(self, config: Path, models: Path) -> subprocess.CompletedProcess[str]:
        return self.run("agent", "--config", str(config), "--models", str(models), "--once")

    def plan(self, config: Path, models: Path) -> subprocess.CompletedProcess[str]:
        return self.run("plan", "--config", str(config), "--models", str(models), "-o", "json")

    @contextmanager
    def agent(self, config: Path, models: Path) -> Iterator[AgentProcess]:
        """``prefetcher agent`` running on the models file; SIGTERM at the end, as kubelet stops it."""
        address = json.loads(config.read_text())["listenAddress"]
        log_file = self.workdir / f"agent-{config.stem}.log"
        command = [sys.executable, "-m", "prefetcher", "agent", "--config", str(config), "--models"]
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [*command, str(models)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        agent = AgentProcess(process, log_file, f"http://{address}/metrics")
        try:
            agent.wait(lambda: agent.metric("prefetcher_last_reconcile_timestamp_seconds") > 0, what="a pass")
            yield agent
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=20)

    def used_bytes(self) -> int:
        st = os.statvfs(self.containerd.root)
        return (st.f_blocks - st.f_bavail) * st.f_frsize

    def limit_bytes(self, percent: float) -> float:
        st = os.statvfs(self.containerd.root)
        return st.f_blocks * st.f_frsize * percent / 100


def next_pass(agent: AgentProcess) -> None:
    """Wait for a pass that starts after now (passes complete at least a second apart)."""
    done = agent.metric("prefetcher_last_reconcile_timestamp_seconds")
    agent.wait(lambda: agent.metric("prefetcher_last_reconcile_timestamp_seconds") > done, what="a pass")


@pytest.fixture
def node(containerd: RunningContainerd, registry: RunningRegistry, tmp_path: Path) -> Node:
    """The session's containerd (no budget pressure) with this test's own agent files."""
    return Node(containerd, registry, tmp_path)


@pytest.fixture
def small_node(containerd_factory: ContainerdFactory, registry: RunningRegistry, tmp_path: Path) -> Node:
    """A containerd of its own on a 256 MiB tmpfs: a budget that two 40 MiB models exceed at 60 %."""
    return Node(containerd_factory(root_size_mb=256), registry, tmp_path)


def modelcar(registry: RunningRegistry, name: str, size_mib: int = 1) -> PushedImage:
    return push_modelcar(registry, f"faults/{name}", model_size_bytes=size_mib * MIB, seed=hash(name) % 1000)


def absent(registry: RunningRegistry, name: str) -> str:
    return f"oci://{registry.host}/faults/{name}@sha256:{'0' * 63}{len(name) % 10}"


# 1. Bad bytes in the shared ConfigMap


@pytest.mark.parametrize("target", ["config", "models"])
def test_bad_bytes_written_into_a_running_agents_file_are_rejected_and_the_last_good_kept(
    node: Node, target: str
) -> None:
    first, second = modelcar(node.registry, "bytes-first"), modelcar(node.registry, "bytes-second")
    config, models = node.config(), node.models(first.uri)
    with node.agent(config, models) as agent:
        agent.wait(lambda: first.ref in node.containerd.image_refs(), what="the first model")
        good = (config if target == "config" else models).read_bytes()
        (config if target == "config" else models).write_bytes(good[:20] + b"\xff\xfe" + good[20:])
        agent.wait(lambda: agent.metric("prefetcher_config_reloads_total", outcome="invalid") == 1,
                   what="the edit rejected")
        next_pass(agent)
        assert "not valid UTF-8 (byte 0xff at offset 20); keeping the last good version" in agent.log()
        (config if target == "config" else models).write_bytes(good)
        node.models(first.uri, second.uri)
        agent.wait(lambda: second.ref in node.containerd.image_refs(), what="a good edit applied")
        assert TRACEBACK not in agent.log()


def test_plan_and_a_one_shot_run_refuse_a_file_that_is_not_utf8_without_a_traceback(node: Node) -> None:
    config, models = node.config(), node.models()
    config.write_bytes(config.read_bytes() + b"\n# caf\xe9\n")
    for result in (node.plan(config, models), node.once(config, models)):
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"prefetcher: {config}: not valid UTF-8 (byte 0xe9 at offset ")
        assert TRACEBACK not in result.stderr


# 2. An emptied config, and keys that need a restart


def test_an_emptied_config_is_rejected_and_the_running_budget_kept(small_node: Node) -> None:
    node = small_node
    config, models = node.config(budget={"maxUsagePercent": 50}), node.models()
    with node.agent(config, models) as agent:
        budget = agent.metric("prefetcher_budget_bytes")
        assert budget == pytest.approx(node.limit_bytes(50), abs=1)
        config.write_text("")
        agent.wait(lambda: agent.metric("prefetcher_config_reloads_total", outcome="invalid") == 1,
                   what="the emptied config rejected")
        assert agent.metric("prefetcher_config_reloads_total", outcome="success") == 0
        assert "config is empty (write `{}` for all defaults); keeping the last good version" in agent.log()
        next_pass(agent)
        assert agent.metric("prefetcher_budget_bytes") == budget


def test_a_change_to_a_key_that_needs_a_restart_is_said_so(node: Node) -> None:
    config, models = node.config(), node.models()
    with node.agent(config, models) as agent:
        settings = json.loads(config.read_text())
        config.write_text(json.dumps({**settings, "imageFsPath": "/elsewhere", "resyncSeconds": 2}))
        agent.wait(lambda: "config keys imageFsPath changed; they take effect only after the agent restarts"
                   in agent.log(), what="the restart notice")
        assert agent.log().count("config keys imageFsPath changed") == 1
        assert agent.metric("prefetcher_config_reloads_total", outcome="success") == 1


# 3. A corrupt state file


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 1, "managed": {}, "backoff": {}}\xff\xfe',
        b'{"version": 1, "managed": {"a": {"ref": "a", "image_id": "sha256:1", "pulled_at": 1, '
        b'"last_desired_at": "never", "cost_bytes": 1}}, "backoff": {}}',
        b'{"version": 1, "managed": {}, "backoff": {"a": {"failures": 1, "until": "soon", '
        b'"last_error": ""}}}',
    ],
    ids=["not-utf8", "last-desired-never", "backoff-until-soon"],
)
def test_a_corrupt_state_file_is_set_aside_and_the_agent_runs(node: Node, content: bytes) -> None:
    model = modelcar(node.registry, f"state-{hashlib.sha256(content).hexdigest()[:12]}")
    config, models = node.config(), node.models(model.uri)
    node.state.write_bytes(content)
    result = node.once(config, models)
    assert result.returncode == 0, result.stderr
    assert TRACEBACK not in result.stderr
    assert f"state file {node.state} is invalid (" in result.stderr
    assert node.state.with_suffix(".corrupt").read_bytes() == content
    assert model.ref in json.loads(node.state.read_text())["managed"]
    again = node.once(config, models)  # never a crash loop: the next start is clean
    assert again.returncode == 0 and "state file" not in again.stderr, again.stderr


# 4. A forged ownership claim


def test_a_forged_ownership_claim_never_evicts_a_foreign_image(node: Node) -> None:
    foreign = modelcar(node.registry, "foreign-claimed")
    own = modelcar(node.registry, "own-claimed")
    pods = CriPods(node.containerd.endpoint, log_root=node.workdir / "logs")
    pods.ensure_image(foreign.ref)  # pulled by someone else
    (record,) = [i for i in runtime_images(node) if foreign.ref in i["refs"]]
    config = node.config()
    # The agent's own pull, then its own claim, then a claim forged beside it in the format of
    # the agent's previous version and, after that, in the current one with the real id and size.
    assert node.once(config, node.models(own.uri)).returncode == 0
    forged_v1 = {"version": 1, "backoff": {}, "managed": {foreign.ref: {
        "ref": foreign.ref, "image_id": record["id"], "pulled_at": 1.0, "last_desired_at": 1.0,
        "cost_bytes": record["size"]}}}
    saved = node.state.read_text()
    node.state.write_text(json.dumps(forged_v1))
    result = node.once(config, node.models())
    assert result.returncode == 0, result.stderr
    assert foreign.ref in node.containerd.image_refs(), "a foreign image was evicted on a forged claim"
    node.state.write_text(saved)
    current = json.loads(saved)
    current["managed"][foreign.ref] = {**current["managed"][own.ref], "ref": foreign.ref,
                                       "image_id": record["id"], "image_size_bytes": record["size"]}
    node.state.write_text(json.dumps(current))
    result = node.once(config, node.models())
    assert result.returncode == 0, result.stderr
    assert foreign.ref in node.containerd.image_refs(), "a foreign image was evicted on a forged claim"
    assert f"not trusting the ownership claims on 1 image(s) ({foreign.ref})" in result.stderr
    assert own.ref not in node.containerd.image_refs(), "the agent's own proven claim must still evict"


def runtime_images(node: Node) -> list[dict[str, Any]]:
    with CriImageRuntime(node.containerd.endpoint) as runtime:
        return [{"id": i.id, "refs": i.refs, "size": i.size_bytes} for i in runtime.list_images()]


# 5. Two agents on one state file


def test_a_second_agent_on_the_same_state_file_is_refused_naming_the_first(node: Node) -> None:
    model = modelcar(node.registry, "locked-model")
    config, models = node.config(), node.models(model.uri)
    with node.agent(config, models) as agent:
        other = node.once(node.config("other.yaml"), models)  # its own port, the same state file
        assert other.returncode == 2, other.stdout + other.stderr
        assert f"state file {node.state} is in use by another agent (pid {agent.process.pid}, lock " in (
            other.stderr
        )
        plan = node.plan(node.config("plan.yaml"), models)  # a dry run needs no lock
        assert plan.returncode == 0, plan.stderr
        agent.check()


# 6. A manifest that lies about its sizes


def push_lying(registry: RunningRegistry, honest: PushedImage, tag: str, **layer0: Any) -> str:
    """``honest``'s manifest with its first layer's fields replaced, pushed under ``tag``; its URI."""
    return push_lying_layer(registry, honest, tag, 0, **layer0)


def push_lying_layer(
    registry: RunningRegistry, honest: PushedImage, tag: str, index: int, **fields: Any
) -> str:
    """``honest``'s manifest with layer ``index``'s fields replaced, pushed under ``tag``; its URI."""
    body, _, _ = get_manifest(registry, honest.repository, honest.digest)
    manifest = json.loads(body)
    manifest["layers"][index] = {**manifest["layers"][index], **fields}
    digest = push_manifest(
        RegistryClient(registry), honest.repository, tag, json.dumps(manifest).encode(), OCI_MANIFEST
    )
    return f"oci://{registry.host}/{honest.repository}@{digest}"


def test_a_manifest_with_a_negative_size_is_a_failed_lookup_and_the_budget_holds(small_node: Node) -> None:
    node = small_node
    base = modelcar(node.registry, "liar-base")
    liar = push_lying(node.registry, base, "negative", size=-20 * 2**40)
    high, low = modelcar(node.registry, "honest-high", 40), modelcar(node.registry, "honest-low", 40)
    config = node.config(budget={"maxUsagePercent": 60})
    models = node.models(liar, high.uri, low.uri, priorities=(10, 5, 1))
    plan = node.plan(config, models)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert [p["ref"] for p in doc["pulls"]] == [high.ref]
    skips = {s["ref"]: (s["reason"], s["message"]) for s in doc["skips"]}
    reason, message = skips[liar.removeprefix("oci://")]
    assert reason == "unresolved"
    assert f"registry {node.registry.host} repository faults/liar-base" in message
    assert "layers[0].size -21990232555520 is not a byte count" in message
    assert skips[low.ref][0] == "budget"
    result = node.once(config, models)
    assert result.returncode == 1  # the lying manifest is a failed lookup
    assert high.ref in node.containerd.image_refs() and low.ref not in node.containerd.image_refs()
    assert node.used_bytes() <= node.limit_bytes(60)


def test_a_manifest_that_understates_its_layers_is_cancelled_when_the_budget_is_passed(
    small_node: Node,
) -> None:
    node = small_node
    honest = modelcar(node.registry, "under-honest", 40)
    base = modelcar(node.registry, "under-base", 40)
    liar = push_lying_layer(node.registry, base, "understated", 1, size=1)  # 40 MiB declared as 1 byte
    config = node.config(budget={"maxUsagePercent": 40}, pull={"backoffBaseSeconds": 600})
    assert node.once(config, node.models(honest.uri)).returncode == 0
    limit = node.limit_bytes(40)
    assert node.used_bytes() + 50 * MIB > limit, "the liar's real size must not fit"
    with gated_proxy(node.registry, base.layer_digests[1], hold_after=30 * MIB) as proxy:
        node.containerd.trust_registry(proxy.host)
        uri = liar.replace(node.registry.host, proxy.host)
        config = node.config(
            budget={"maxUsagePercent": 40},
            pull={"backoffBaseSeconds": 600, "backoffMaxSeconds": 600},
            registries={"insecure": [node.registry.host, proxy.host]},
        )
        with node.agent(config, node.models(honest.uri, uri)) as agent:
            agent.wait(lambda: "(over_budget, attempt 1): the image filesystem grew by" in agent.log(),
                       what="the understated pull cancelled past the budget")
            assert "its manifest declares, and passed the budget of" in agent.log()
            assert agent.metric("prefetcher_pulls_total", outcome="failed", reason="over_budget") == 1
            agent.wait(lambda: node.used_bytes() <= limit, what="the cancelled pull's content discarded")
        assert honest.ref in node.containerd.image_refs()


# 7. Duplicates, state writes, cost after an interrupted pull, unknown keys, log lines


def test_fifty_copies_of_a_failing_model_are_one_lookup_and_one_failure(node: Node) -> None:
    missing = absent(node.registry, "fifty-copies")
    models = node.workdir / "models.yaml"
    models.write_text(json.dumps({"models": [{"uri": missing, "priority": i % 3} for i in range(50)]}))
    result = node.once(node.config(), models)
    assert result.returncode == 1
    state = json.loads(node.state.read_text())
    assert state["backoff"][missing.removeprefix("oci://")]["failures"] == 1
    assert result.stderr.count("pull failed: ") == 1  # one lookup, one failure, one Event
    assert result.stdout.count(f"failed   {missing.removeprefix('oci://')}") == 1


def test_a_one_shot_run_writes_the_state_once_per_pass_not_once_per_failure(node: Node) -> None:
    models = node.models(*(absent(node.registry, f"batched-{i:03d}") for i in range(40)))
    config = node.config()
    with watch_renames(node.workdir, node.state.name) as renames:
        result = node.once(config, models)
        writes = renames()
    assert result.returncode == 1
    assert len(json.loads(node.state.read_text())["backoff"]) == 40
    assert writes == 1, "one write for the pass that recorded 40 failures"


@contextmanager
def watch_renames(directory: Path, name: str) -> Iterator[Any]:
    """Count files renamed onto ``directory/name`` (each atomic state write is one) with inotify.

    Creations are watched too: inotify merges identical consecutive events, and each write's
    temporary file comes between two renames.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    in_moved_to, in_create = 0x80, 0x100
    if libc.inotify_add_watch(fd, str(directory).encode(), in_moved_to | in_create) < 0:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "inotify_add_watch")
    seen = 0

    def count() -> int:
        nonlocal seen
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return seen
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    return seen
                raise
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                entry = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                seen += bool(mask & in_moved_to) and entry == name
                offset += 16 + length

    try:
        yield count
    finally:
        os.close(fd)


def test_after_containerd_restarts_mid_pull_the_cost_counts_what_was_fetched_before(
    small_node: Node,
) -> None:
    node = small_node
    model = modelcar(node.registry, "interrupted", 40)
    before = node.used_bytes()
    # The base layer is held at its first MiB while the 40 MiB model layer arrives whole: the pull
    # is under way with that layer on disk when containerd restarts, and the retry reuses it.
    with gated_proxy(node.registry, model.layer_digests[0], hold_after=MIB) as proxy:
        node.containerd.trust_registry(proxy.host)
        uri = f"oci://{proxy.host}/{model.repository}@{model.digest}"
        config = node.config(registries={"insecure": [proxy.host]}, budget={"maxUsagePercent": 90})
        with node.agent(config, node.models(uri)) as agent:
            agent.wait(lambda: proxy.gate.holding.is_set() and node.used_bytes() - before >= 40 * MIB,
                       what="the model layer fetched while the base layer is held")
            node.containerd.stop(kill=True)  # a crash: the pull's lease outlives it, and its blobs
            proxy.gate.release()
            node.containerd.start()
            agent.wait(lambda: agent.metric("prefetcher_pulls_total", outcome="success", reason="") == 1,
                       what="the pull done after the restart", timeout_seconds=120)
        cost = json.loads(node.state.read_text())["managed"][uri.removeprefix("oci://")]["cost_bytes"]
    real = node.used_bytes() - before
    assert cost >= 0.9 * real, f"recorded {cost} bytes for a pull that cost {real}"


def test_an_unknown_top_level_key_in_the_models_file_is_rejected(node: Node) -> None:
    models = node.workdir / "models.yaml"
    models.write_text(json.dumps({"model": [{"uri": absent(node.registry, "typo")}]}))
    result = node.once(node.config(), models)
    assert result.returncode == 2
    assert result.stderr == "prefetcher: model: unknown key (a models file holds only `models`)\n"


def test_a_yaml_error_in_a_running_agents_file_is_logged_once_on_one_line(node: Node) -> None:
    config, models = node.config(), node.models()
    with node.agent(config, models) as agent:
        models.write_text("models:\n  - uri: [unclosed\n")
        agent.wait(lambda: agent.metric("prefetcher_config_reloads_total", outcome="invalid") == 1,
                   what="the edit rejected")
        next_pass(agent)
        lines = [line for line in agent.log().splitlines() if "not valid YAML" in line]
        assert len(lines) == 1, lines
        assert "models file is not valid YAML: line 3, column 1: " in lines[0]
        assert "keeping the last good version" in lines[0]


def test_sigterm_is_logged_and_the_agent_exits_cleanly(node: Node) -> None:
    with node.agent(node.config(), node.models()) as agent:
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=20) == 0
    assert "prefetcher stopping on SIGTERM after " in agent.log()
