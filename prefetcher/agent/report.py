"""What a plan or a one-shot run did, for people (text) and for tools (JSON)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefetcher.core.model import Plan
from prefetcher.core.units import format_bytes


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-ready document (``prefetcher plan -o json``)."""
    return {
        "limitBytes": plan.limit_bytes,
        "usedBytes": plan.used_bytes,
        "projectedBytes": plan.projected_bytes,
        "pulls": [
            {
                "ref": p.model.ref.canonical(),
                "priority": p.model.priority,
                "costBytes": p.cost_bytes,
                "sources": list(p.model.sources),
            }
            for p in plan.pulls
        ],
        "evictions": [asdict(e) for e in plan.evictions],
        "skips": [{"ref": s.ref, "reason": s.reason.value, "message": s.message} for s in plan.skips],
        "warm": [m.ref.canonical() for m in plan.warm],
    }


def print_plan(plan: Plan, *, failed: dict[str, str]) -> None:
    """The plan, and the models that failed, one line each."""
    print(
        f"image filesystem: {format_bytes(plan.used_bytes)} used, budget {format_bytes(plan.limit_bytes)}, "
        f"projected {format_bytes(plan.projected_bytes)}"
    )
    for m in plan.warm:
        print(f"  warm     {m.ref.canonical()}")
    for p in plan.pulls:
        print(
            f"  pull     {p.model.ref.canonical()}  priority={p.model.priority}"
            f"  ~{format_bytes(p.cost_bytes)}"
        )
    for e in plan.evictions:
        print(f"  evict    {', '.join(e.refs)}  ({e.reason.value}, frees ~{format_bytes(e.freed_bytes)})")
    for s in plan.skips:
        print(f"  skip     {s.ref}  ({s.reason.value}) {s.message}")
    for ref, error in failed.items():
        print(f"  failed   {ref}  {error}")
