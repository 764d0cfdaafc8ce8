"""Ray actor classes built on first use, so that importing an actor's module (its plain core)
never imports Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LazyActor"]


class LazyActor:
    """Stands for the class `make()` returns; `make` runs at the first attribute access."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._cls: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._cls is None:
            self._cls = self._make()
        return getattr(self._cls, name)
