"""``isvc.select`` kept up to date cheaply while InferenceServices come and go one at a time.

Deciding the fit of every component of every InferenceService costs about 65 ms for 10,000 of them
on an idle core (bench/isvc_scale.py's objects), and the agent decides again after every change,
before it starts the pull that change asks for. ``Selector`` keeps each record's result while the
record (the same object) and the node (an equal one) stay, so one change costs one fit and the
joining of the kept results.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from prefetcher.core.isvc import IsvcModels, Selection, select
from prefetcher.core.nodefit import NodeInfo

_Kept = dict[str, tuple[IsvcModels, Selection]]


class Selector:
    """``select`` with each record's result kept from the last call."""

    def __init__(self, *, ignore_taints: frozenset[str] = frozenset()) -> None:
        self._ignore_taints = ignore_taints
        # One attribute, replaced whole: a call on another thread never sees half of it.
        self._memo: tuple[NodeInfo | None, _Kept] = (None, {})

    def select(self, records: Iterable[IsvcModels], node: NodeInfo) -> Selection:
        """The same as ``isvc.select(records, node, ignore_taints=...)`` for records of distinct keys."""
        last_node, last = self._memo
        previous = last if node == last_node else {}
        kept: _Kept = {}
        for record in records:
            hit = previous.get(record.key)
            if hit is None or hit[0] is not record:
                hit = (record, select((record,), node, ignore_taints=self._ignore_taints))
            kept[record.key] = hit
        self._memo = (node, kept)
        parts = [part for _, part in kept.values()]
        return Selection(
            tuple(chain.from_iterable(part.requests for part in parts)),
            tuple(chain.from_iterable(part.excluded for part in parts)),
        )
