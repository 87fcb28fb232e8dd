"""The reconcile loop's decisions, against in-memory fakes of the runtime, registry and disk."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from prefetcher.agent.executor import PullTracker
from prefetcher.agent.keychain import Keychain
from prefetcher.agent.reconciler import Reconciler
from prefetcher.config import Config, load_config
from prefetcher.core.model import DesiredModel, ModelRequest, Pull
from prefetcher.core.state import AgentState
from prefetcher.errors import CredentialsError, PullFailedError, RegistryError
from prefetcher.metrics import Metrics
from prefetcher.ports import Credentials
from prefetcher.testing.fakes import (
    FakePullSecrets,
    image_id,
)
from tests.support.polling import eventually
from tests.support.reconciler_world import HOST, MIB, World, ref


def test_once_pulls_what_fits_and_states_why_the_rest_is_skipped() -> None:
    world = World({"a": 300 * MIB, "b": 300 * MIB})  # each costs 600 MiB; budget is 800 MiB
    world.source.models = [
        ModelRequest(f"oci://{ref('a')}", 5, "test a"),
        ModelRequest(f"oci://{ref('b')}", 1, "test b"),
    ]
    agent = world.agent()
    assert agent.run(threading.Event(), once=True) == 0
    assert [p.ref for p in world.runtime.pulls] == [ref("a")]
    (skip,) = agent.status().report.plan.skips
    assert skip.ref == ref("b") and skip.reason.value == "budget" and skip.sources == ("test b",)
    assert world.saved[-1].managed[ref("a")].cost_bytes == 600 * MIB
    assert "PrefetchSkipped" in world.events.reasons() and "Prefetched" in world.events.reasons()


def test_a_source_change_starts_a_pass_at_once_not_at_the_next_resync() -> None:
    world = World({"a": 10 * MIB}, config="resyncSeconds: 3600")
    wake, stop = threading.Event(), threading.Event()
    agent = world.agent(wake=wake)
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    try:
        eventually(lambda: agent.status().passes >= 1, timeout_seconds=5, what="the first pass")
        world.want("a")
        wake.set()
        # The fake clock never reaches the resync deadline: only the wake can start this pass.
        eventually(lambda: bool(world.runtime.pulls), timeout_seconds=5, what="a pull after the wake")
    finally:
        stop.set()
        wake.set()
        loop.join(timeout=5)
    assert not loop.is_alive()
    assert [p.ref for p in world.runtime.pulls] == [ref("a")]


def test_registry_errors_fail_one_model_while_the_others_are_pulled() -> None:
    world = World({"good": 10 * MIB, "locked": 10 * MIB})
    world.registry.errors[ref("locked")] = RegistryError("401 unauthorized", status=401)
    world.want("good", "locked", "missing")
    agent = world.agent()
    assert agent.run(threading.Event(), once=True) == 1
    assert [p.ref for p in world.runtime.pulls] == [ref("good")]
    assert set(agent.status().report.failed) == {ref("locked"), ref("missing")}
    backoff = world.saved[-1].backoff
    assert backoff[ref("locked")].failures == 1 and "401" in backoff[ref("locked")].last_error


def test_malformed_uri_is_skipped_with_reason_and_the_rest_proceed() -> None:
    world = World({"a": 10 * MIB})
    world.source.models = [
        ModelRequest("oci://Bad/Name", 0, "test bad"),
        ModelRequest(f"oci://{ref('a')}", 0, "a"),
    ]
    agent = world.agent()
    assert agent.run(threading.Event(), once=True) == 0
    assert agent.status().report.plan.skips[0].reason.value == "invalid_reference"
    assert [p.ref for p in world.runtime.pulls] == [ref("a")]


def test_failed_pull_backs_off_and_is_not_retried_within_the_run() -> None:
    world = World({"a": 10 * MIB})
    world.runtime.failures[ref("a")] = PullFailedError("not found", reason="not_found")
    world.want("a")
    assert world.agent().run(threading.Event(), once=True) == 1
    assert len(world.runtime.pulls) == 1
    entry = world.saved[-1].backoff[ref("a")]
    assert entry.until == pytest.approx(world.clock.now() + 30, rel=0.25)


def test_a_one_shot_run_tries_a_model_an_earlier_run_left_backing_off() -> None:
    world = World({"a": 10 * MIB})
    world.runtime.failures[ref("a")] = PullFailedError("not found", reason="not_found")
    world.want("a")
    assert world.agent().run(threading.Event(), once=True) == 1
    del world.runtime.failures[ref("a")]
    assert world.agent(world.saved[-1]).run(threading.Event(), once=True) == 0
    assert [p.ref for p in world.runtime.pulls] == [ref("a"), ref("a")]


def test_restart_resumes_from_state_without_pulling_again_and_evicts_what_is_unwanted() -> None:
    world = World({"a": 10 * MIB, "b": 10 * MIB})
    world.want("a", "b")
    assert world.agent().run(threading.Event(), once=True) == 0
    state = world.saved[-1]
    world.want("a")
    world.runtime.in_use.clear()
    restarted = world.agent(state=AgentState(dict(state.managed), dict(state.backoff)))
    assert restarted.run(threading.Event(), once=True) == 0
    assert len(world.runtime.pulls) == 2  # no pull after the restart
    assert world.runtime.removed == [image_id(ref("b"))]
    assert ref("b") not in world.saved[-1].managed


def test_images_in_use_or_not_pulled_by_the_agent_are_never_evicted() -> None:
    world = World({"a": 10 * MIB, "b": 10 * MIB})
    world.want("a", "b")
    agent = world.agent()
    agent.run(threading.Event(), once=True)
    world.runtime.in_use.add(image_id(ref("a")))
    world.runtime.sizes["foreign"] = 5
    world.runtime.images["sha256:foreign"] = replace(
        world.runtime.images[image_id(ref("b"))], id="sha256:foreign", repo_digests=("foreign",)
    )
    world.want()
    agent.run(threading.Event(), once=True)
    assert world.runtime.removed == [image_id(ref("b"))]
    assert image_id(ref("a")) in world.runtime.images and "sha256:foreign" in world.runtime.images


def test_stalled_pull_is_cancelled_after_stall_seconds_without_growth() -> None:
    world = World({"a": 10 * MIB})
    world.runtime.held.add(ref("a"))
    tracker = PullTracker(
        runtime=world.runtime,
        disk=world.disk,
        clock=world.clock,
        keychain=Keychain(node=world.registry.credentials_for),
    )
    model = world.registry.table[ref("a")]
    tracker.start(Pull(DesiredModel(model.ref, 0, model.size_bytes, ("t",)), 20 * MIB), world.config)
    world.clock.advance(100)
    world.disk.used_bytes += MIB  # progress resets the stall timer
    assert tracker.poll(stall_seconds=120) == []
    world.clock.advance(121)
    (outcome,) = tracker.poll(stall_seconds=120)
    assert outcome.reason == "stalled" and world.runtime.pulls[0].cancelled


def test_runtime_down_fails_the_pass_loudly_and_the_next_pass_recovers() -> None:
    world = World({"a": 10 * MIB})
    world.want("a")
    agent = world.agent()
    world.runtime.down = True
    agent._pass_safely(world.config, None)
    assert not agent.status().healthy and world.runtime.pulls == []
    world.runtime.down = False
    agent._pass_safely(world.config, None)
    assert agent.status().healthy and [p.ref for p in world.runtime.pulls] == [ref("a")]


def test_the_after_pass_hook_sees_failed_passes_as_unsettled_with_their_error() -> None:
    world = World({"a": 10 * MIB})
    world.want("a")
    seen: list[tuple[bool, bool, object]] = []
    agent = world.agent(
        after_pass=lambda *, settled, passed, summary: seen.append((settled, passed, summary["lastError"]))
    )
    world.runtime.down = True
    agent._pass_safely(world.config, None)
    assert agent.status().last_error and seen == [(False, False, agent.status().last_error)]
    world.runtime.down = False
    agent._pass_safely(world.config, None)
    assert seen[-1][:2] == (False, True), "a pass that started a pull is not settled, but it passed"


def test_a_workloads_pull_secret_is_used_to_resolve_and_pull_its_model() -> None:
    world = World({"private": 10 * MIB})
    secret = Credentials("puller", "s3cret")
    world.registry.protected[ref("private")] = secret
    world.pull_secrets = FakePullSecrets(keyring={"test private": secret})
    world.want("private")
    assert world.agent().run(threading.Event(), once=True) == 0
    assert [(p.ref, p.credentials) for p in world.runtime.pulls] == [(ref("private"), secret)]


def test_unreadable_pull_secrets_fail_a_private_model_clearly_and_a_public_one_is_pulled() -> None:
    world = World({"private": 10 * MIB, "public": 10 * MIB})
    world.registry.protected[ref("private")] = Credentials("puller", "s3cret")
    forbidden = CredentialsError("reading ServiceAccount team-b/default is forbidden: RoleBinding missing")
    world.pull_secrets = FakePullSecrets(errors={"test private": forbidden, "test public": forbidden})
    world.want("private", "public")
    agent = world.agent()
    assert agent.run(threading.Event(), once=True) == 1
    assert [(p.ref, p.credentials) for p in world.runtime.pulls] == [(ref("public"), None)]
    error = agent.status().report.failed[ref("private")]
    assert "401" in error and "pull secrets were not used: reading ServiceAccount team-b/default" in error
    warned = [e for e in world.events.events if e[2] == "PullSecretsUnavailable"]
    assert [(e[0], "forbidden" in e[3]) for e in warned] == [(("test public",), True)]


def test_a_failed_pull_says_why_the_workloads_secrets_were_not_used() -> None:
    world = World({"a": 10 * MIB})
    world.pull_secrets = FakePullSecrets(errors={"test a": CredentialsError("secret team-a/x not found")})
    world.runtime.failures[ref("a")] = PullFailedError("401 unauthorized", reason="unauthorized")
    world.want("a")
    assert world.agent().run(threading.Event(), once=True) == 1
    assert world.saved[-1].backoff[ref("a")].last_error == (
        "401 unauthorized; the workload's pull secrets were not used: secret team-a/x not found"
    )


def test_a_rejected_tag_is_reported_on_the_object_that_asked_for_it() -> None:
    world = World({}, config="pull: {tagPolicy: reject}")
    world.source.models = [ModelRequest(f"oci://{HOST}/models/llm:latest", 0, "isvc ns/llm")]
    world.agent().run(threading.Event(), once=True)
    skipped = [e for e in world.events.events if e[2] == "PrefetchSkipped"]
    assert skipped and skipped[0][0] == ("isvc ns/llm",), world.events.events


def test_duplicates_are_one_lookup_and_one_failure_with_every_source() -> None:
    world = World({})
    world.source.models = [ModelRequest(f"oci://{ref('gone')}", i % 3, f"copy {i}") for i in range(50)]
    agent = world.agent()
    assert agent.run(threading.Event(), once=True) == 1
    assert world.registry.lookups == [ref("gone")]
    assert world.saved[-1].backoff[ref("gone")].failures == 1
    (failed,) = [e for e in world.events.events if e[2] == "PrefetchFailed"]
    assert failed[0] == tuple(f"copy {i}" for i in range(50))


def test_the_state_is_written_once_per_pass_not_once_per_model() -> None:
    world = World({f"m{i}": MIB for i in range(20)})
    world.want(*(f"m{i}" for i in range(20)), "absent1", "absent2", "absent3")
    world.config = load_config("pull: {concurrency: 64}")
    world.agent().reconcile(world.config)
    assert len(world.saved) == 1  # three failures, twenty pulls started: one write


def test_the_summary_lists_config_keys_waiting_for_a_restart() -> None:
    world = World({})
    pending: tuple[str, ...] = ()
    agent = Reconciler(
        runtime=world.runtime, registry=world.registry, source=world.source, disk=world.disk,
        events=world.events, metrics=Metrics(CollectorRegistry()), clock=world.clock,
        config=lambda: world.config, state=AgentState(), save_state=world.saved.append,
        draw=lambda: 0.5, restart_pending=lambda: pending,
    )
    assert agent.summary()["restartPending"] == []
    pending = ("imageFsPath",)
    assert agent.summary()["restartPending"] == ["imageFsPath"]


def test_after_an_interrupted_pull_the_cost_is_the_runtimes_size_not_the_smaller_growth() -> None:
    world = World({"a": 10 * MIB}, config="budget: {unpackFactor: 2}")
    world.want("a")
    world.runtime.failures[ref("a")] = PullFailedError("runtime restarted", reason="error")
    agent = world.agent()
    agent.run(threading.Event(), once=True)
    del world.runtime.failures[ref("a")]
    world.runtime.sizes[ref("a")] = 20 * MIB
    # The first attempt left its blobs: the retry grows the disk by 5 MiB only.
    grow = world.runtime.finish

    def partial(pull: object) -> None:
        grow(pull)  # type: ignore[arg-type]
        world.disk.used_bytes -= 15 * MIB

    world.runtime.finish = partial  # type: ignore[method-assign]
    assert world.agent(world.saved[-1]).run(threading.Event(), once=True) == 0
    managed = world.saved[-1].managed[ref("a")]
    assert managed.image_size_bytes == 20 * MIB
    assert managed.cost_bytes == 40 * MIB  # 20 MiB the runtime reports, times the unpack factor


def test_a_pull_that_outgrows_its_declared_size_past_the_budget_is_cancelled() -> None:
    world = World({"a": 10 * MIB})
    world.runtime.held.add(ref("a"))
    tracker = PullTracker(
        runtime=world.runtime,
        disk=world.disk,
        clock=world.clock,
        keychain=Keychain(node=world.registry.credentials_for),
    )
    model = world.registry.table[ref("a")]
    tracker.start(Pull(DesiredModel(model.ref, 0, model.size_bytes, ("t",)), 20 * MIB), world.config)
    world.disk.used_bytes += 30 * MIB  # more than declared, still under the limit
    assert tracker.poll(stall_seconds=120, limit_bytes=40 * MIB) == []
    world.disk.used_bytes += 20 * MIB  # and now past it
    (outcome,) = tracker.poll(stall_seconds=120, limit_bytes=40 * MIB)
    assert outcome.reason == "over_budget" and world.runtime.pulls[0].cancelled
    expected = "grew by 50.0 MiB during the pull, more than the 20.0 MiB its manifest declares"
    assert expected in (outcome.error or "")


def test_the_config_is_read_once_per_pass() -> None:
    world = World({"a": 10 * MIB})
    world.want("a", "gone1", "gone2", "gone3")  # three failures and a pull in the first pass
    reads: list[Config] = []

    def config() -> Config:
        reads.append(world.config)
        return world.config

    agent = world.agent(config=config)
    assert agent.run(threading.Event(), once=True) == 1
    assert agent.status().passes == 2  # the pull, then a pass that finds nothing left to do
    assert len(reads) == 2


def test_the_status_is_a_snapshot_and_the_loop_keeps_no_public_fields() -> None:
    world = World({"a": 10 * MIB})
    world.want("a")
    agent = world.agent()
    before = agent.status()
    agent.run(threading.Event(), once=True)
    after = agent.status()
    assert (before.passes, before.healthy) == (0, False)
    assert after.passes >= 1 and after.healthy and after.summary()["warm"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.passes = 0  # type: ignore[misc]
    assert [name for name in vars(agent) if not name.startswith("_")] == []
