"""raymask: mask sensitive data in machine-to-machine streams, on Ray.

The Python API::

    import raymask
    summary = raymask.mask_file("policy.yaml", "payments", "in.ndjson", "out.ndjson", role="ops")
    print(summary.records_in, summary.records_out, summary.dead_letters)

`reveal_values` turns fpe/encrypt outputs back into clear values for a key holder,
`load_policy` validates a policy file, `Keyring` holds the keys (from RAYMASK_KEYRING /
RAYMASK_KEY_* or a key file), `generate_bytes` makes synthetic traffic.
"""

from __future__ import annotations

from raymask.cluster.pipeline import RunSummary, mask_file, replay_dead_letters
from raymask.cluster.reveal import RevealResult, reveal_values
from raymask.errors import InputError, KeyringError, PipelineError, PolicyError, RaymaskError
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.keys import Key, Keyring
from raymask.policy.loader import load_policy, parse_policy
from raymask.policy.schema import Policy

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "Key",
    "Keyring",
    "KeyringError",
    "PipelineError",
    "Policy",
    "PolicyError",
    "RaymaskError",
    "RunSummary",
    "generate_bytes",
    "load_policy",
    "mask_file",
    "parse_policy",
    "replay_dead_letters",
    "RevealResult",
    "reveal_values",
]
