"""The leak monitor's audit log: one JSON line per (view, field, type) a sampled output batch
still held something detectable in. It names the stream, the view, the field path, the type and
the policy version, and how many spans among how many sampled records; never a value."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LeakAudit", "leak_events"]


def leak_events(stream: str, outputs, clock: Callable[[], float] = time.time) -> list[dict]:  # noqa: ANN001
    """Audit events for the leaks in the MaskOutputs of one chunk."""
    events = []
    for o in outputs:
        for fld, typ, count in o.leaks:
            events.append({
                "ts": round(clock(), 3), "event": "leak", "stream": stream, "view": o.role,
                "field": fld, "type": typ, "count": int(count), "sampled": int(o.leak_sampled),
                "policy_version": int(o.policy_version),
            })  # fmt: skip
    return events


class LeakAudit:
    """Appends events to a file (created at the first event, fsynced per write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.events = 0
        self._lock = threading.Lock()

    def write(self, events: list[dict]) -> None:
        if not events:
            return
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
            f.flush()
            os.fsync(f.fileno())
            self.events += len(events)
