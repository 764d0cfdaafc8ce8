"""The one exception tree of raymask. Messages name files, lines, fields and keys; never a value.

    RaymaskError
     ├── PolicyError        a policy file is invalid (located: file:line: path: what is wrong)
     ├── KeyringError       a key is missing or malformed (names the key id, never the material)
     ├── InputError         an input cannot be read at all (bad records go to dead letters instead)
     ├── PipelineError      the running pipeline failed (a worker died, a sink failed)
     │    └── BrokerUnreachable  a Kafka broker call got no answer within its time limit
     ├── BudgetRefused      the privacy-budget accountant refused a reservation (says why, and
     │                      what is left)
     └── BrokerError        the embedded Kafka broker cannot start, answer or stop

The CLI prints one line for these and exits 2 (usage, policy, keys, input) or 1 (pipeline).
"""

from __future__ import annotations

__all__ = [
    "RaymaskError",
    "PolicyError",
    "KeyringError",
    "InputError",
    "PipelineError",
    "BrokerUnreachable",
    "BrokerError",
    "BudgetRefused",
]


class RaymaskError(Exception):
    """Base of every error raymask raises on purpose."""

    exit_code = 2


class PolicyError(RaymaskError):
    """A policy is invalid; `problems` lists every located message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class KeyringError(RaymaskError):
    """A key is missing from the keyring or malformed."""


class InputError(RaymaskError):
    """An input file or stream cannot be read."""


class PipelineError(RaymaskError):
    """The pipeline failed while running."""

    exit_code = 1


class BrokerUnreachable(PipelineError):
    """A Kafka broker call (commit, write, read-back) got no answer within its time limit: the
    broker is down or cut off. Transient by nature; the pipeline retries until its own limit."""


class BrokerError(RaymaskError):
    """The embedded Kafka broker (tansu) cannot be started, reached or stopped."""

    exit_code = 1


class BudgetRefused(RaymaskError):
    """The accountant refused to grant privacy budget; nothing was spent. `scope` is the scope
    that could not pay, `remaining` its (epsilon, delta) left before this request."""

    exit_code = 1

    def __init__(self, message: str, scope: str = "", remaining: tuple[float, float] = (0.0, 0.0)):
        self.scope = scope
        self.remaining = remaining
        super().__init__(message)
