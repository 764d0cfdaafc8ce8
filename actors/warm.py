"""Warm-up records: masked once in every view by a new process before it takes traffic, so that
the techniques' Numba kernels are loaded (about 0.1-0.2 s from the cache in a new process, more
without it) before the first real batch, not during it.

A Serve replica warms its own core (`warm_up`); a mask worker warms a spare core (see
`MaskWorker.warm`), so its per-subject ledger and any other state never see the warm records.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["WARM_VALUES", "warm_records", "warm_up"]

# what warm_up sets every field to, one record each: a string of digits (card-like), a date,
# a number, an e-mail address, an IPv4 address
WARM_VALUES = ("4111111111111111", "2026-01-02T03:04:05Z", 42, "someone@example.com", "10.1.2.3")


def warm_records(plan: Any) -> bytes:
    """NDJSON records that set each of the plan's fields, once to each of WARM_VALUES."""
    lines = []
    for v in WARM_VALUES:
        rec: dict = {}
        for path in plan.paths:
            *parents, leaf = path.split(".")
            d = rec
            for name in parents:
                d = d.setdefault(name, {})
                if not isinstance(d, dict):  # a field that is also another's parent
                    break
            else:
                d.setdefault(leaf, v)
        lines.append(json.dumps(rec))
    return ("\n".join(lines) + "\n").encode()


def warm_up(core: Any, router: Any, plan: Any) -> None:
    """Mask `warm_records` once in every view of an NDJSON stream, through `router` and `core`.
    Values a technique refuses are dead letters, as in real traffic; the outputs are dropped
    (vault rows included). A failure only leaves the process cold."""
    if plan.format != "ndjson":
        return
    try:
        routed = router.route(np.frombuffer(warm_records(plan), np.uint8), 0)
        if routed.shards[0] is not None:
            core.process_views(routed.batch, list(plan.views), routed.shards[0])
    except Exception:  # noqa: BLE001 (a cold process still works)
        pass
