"""Policy model, loading and compilation (pure: no Ray, no I/O beyond reading the file)."""

from raymask.policy.compile import StreamPlan, compile_stream
from raymask.policy.keys import Key, Keyring
from raymask.policy.loader import load_policy, parse_policy
from raymask.policy.schema import Policy

__all__ = [
    "Policy",
    "StreamPlan",
    "Key",
    "Keyring",
    "compile_stream",
    "load_policy",
    "parse_policy",
]
