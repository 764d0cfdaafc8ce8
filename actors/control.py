"""PipelineControl: the named actor through which a running pipeline takes a new policy.

`ControlCore` is the plain logic: it holds the running policy and its version, and accepts a new
one only when it validates, compiles for the stream, names keys the pipeline has (ids and sizes
only; the control never sees key material), keeps the wire format, and has a higher version.
The driver polls the version between batches and switches the router and every worker at a batch
boundary, so each output batch is masked by exactly one version.

The actor is named ``pipeline:<name>`` in the ``raymask`` namespace, so `raymask policy push`
finds it from another process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raymask.errors import PolicyError
from raymask.policy.compile import StreamPlan, compile_stream
from raymask.policy.keys import Key, Keyring
from raymask.policy.loader import validate_data

__all__ = [
    "ControlCore",
    "NAMESPACE",
    "actor_name",
    "key_shapes",
    "make_control_actor",
    "push_policy",
    "scale_pipeline",
]

NAMESPACE = "raymask"
MAX_WORKERS = 64


def actor_name(pipeline: str) -> str:
    return f"pipeline:{pipeline}"


def key_shapes(ring: Keyring) -> dict[str, dict[int, int]]:
    """Key ids, versions and sizes: what the control may know about the keys (no material)."""
    return {k: {v: len(ring.get(k, v).material) for v in ring.versions(k)} for k in ring.ids()}


class ControlCore:
    def __init__(self, policy: dict, stream: str, keys: dict[str, dict[int, int]]) -> None:
        self.stream = stream
        # a keyring of zero-filled stand-ins with the real ids and sizes, for the key checks only
        self._shapes = Keyring(Key(k, v, bytes(n)) for k, vs in keys.items() for v, n in vs.items())
        pol = validate_data(policy, "<running>")
        self._plan = compile_stream(pol, stream)
        self.version = pol.version
        self.policy = policy
        self.history: list[tuple[int, float, str]] = [(pol.version, time.time(), "start")]
        self.workers = 0  # desired pool size; 0 = as started

    def _check(self, policy: dict, source: str) -> StreamPlan:
        pol = validate_data(policy, source)
        plan = compile_stream(pol, self.stream, source)
        try:
            self._shapes.require(plan.key_ids())
            plan.check_keys(self._shapes)
        except Exception as exc:  # KeyringError: name the key, never any material (there is none)
            raise PolicyError([f"{source}: {exc}"]) from None
        if pol.version <= self.version:
            raise PolicyError(
                [
                    f"{source}: version {pol.version} is not newer than the running version {self.version}"
                ]
            )
        old = self._plan
        if plan.format != old.format:
            raise PolicyError(
                [
                    f"{source}: streams.{self.stream}.format: cannot change from {old.format} to {plan.format} while running"
                ]
            )
        if plan.route_path != old.route_path:
            raise PolicyError(
                [
                    f"{source}: streams.{self.stream}.budget.subject: cannot change from "
                    f"{old.route_path} to {plan.route_path} while running (workers own their "
                    "subjects' budgets by it); restart the pipeline"
                ]
            )
        if (
            plan.format == "csv"
            and (plan.unknown_fields, plan.paths[: plan.named])
            != (old.unknown_fields, old.paths[: old.named])
            and "drop" in (plan.unknown_fields, old.unknown_fields)
        ):
            raise PolicyError(
                [
                    f"{source}: streams.{self.stream}: a CSV stream that drops unknown columns cannot change its columns while running"
                ]
            )
        return plan

    def push(self, policy: dict, source: str = "<pushed>", by: str = "") -> int:
        """Accept `policy` as the next version (PolicyError with located messages if not)."""
        plan = self._check(policy, source)
        self._plan = plan
        self.version = plan.version
        self.policy = policy
        self.history.append((plan.version, time.time(), by))
        return plan.version

    def current_version(self) -> int:
        return self.version

    def scale(self, workers: int) -> int:
        """Ask the pipeline to grow or shrink its worker pool (at the next chunk boundary)."""
        if not 1 <= workers <= MAX_WORKERS:
            raise PolicyError([f"workers must be between 1 and {MAX_WORKERS}"])
        self.workers = workers
        return workers

    def desired_workers(self) -> int:
        return self.workers

    def state(self) -> tuple[int, int]:
        """(policy version, desired workers): what the driver polls between chunks."""
        return self.version, self.workers

    def current(self) -> tuple[int, dict]:
        return self.version, self.policy


def make_control_actor(
    pipeline: str, policy: dict, stream: str, keys: dict[str, dict[int, int]]
) -> Any:
    """Start the named control actor of a pipeline (it lives as long as the driver)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class PipelineControl:
        def __init__(self, policy: dict, stream: str, keys: dict) -> None:
            self.core = ControlCore(policy, stream, keys)

        def push(self, policy: dict, source: str = "<pushed>", by: str = "") -> int | list[str]:
            try:
                return self.core.push(policy, source, by)
            except PolicyError as exc:  # returned, not raised: the caller prints the located lines
                return exc.problems

        def current_version(self) -> int:
            return self.core.current_version()

        def state(self) -> tuple[int, int]:
            return self.core.state()

        def scale(self, workers: int) -> int | list[str]:
            try:
                return self.core.scale(workers)
            except PolicyError as exc:
                return exc.problems

        def current(self) -> tuple[int, dict]:
            return self.core.current()

    try:
        ray.get_actor(actor_name(pipeline), namespace=NAMESPACE)
    except ValueError:
        pass
    else:
        from raymask.errors import InputError

        raise InputError(
            f"a pipeline named '{pipeline}' is already running on this cluster; pick another --name"
        )
    return PipelineControl.options(name=actor_name(pipeline), namespace=NAMESPACE).remote(
        policy, stream, keys
    )


def push_policy(
    pipeline: str,
    policy: Any,
    *,
    source: str = "<pushed>",
    by: str = "",
    address: str | None = None,
) -> int:
    """Hand a running pipeline a new policy (a Policy, a dict or a file path); returns the version."""
    from raymask.policy.loader import load_policy
    from raymask.policy.schema import Policy

    if isinstance(policy, Policy):
        data = policy.model_dump(mode="json")
    elif isinstance(policy, dict):
        data = policy
    else:
        source = str(policy)
        data = load_policy(policy).model_dump(mode="json")
    from raymask.actors.audit import Auditor

    auditor = Auditor.from_env()  # RAYMASK_AUDIT=FILE: who pushed what, and what was refused
    try:
        version = _call(pipeline, address, "push", data, source, by)
    except PolicyError as exc:
        auditor.emit("policy_refused", pipeline=pipeline, source=Path(source).name, caller=by,
                     problems=len(exc.problems))  # fmt: skip
        raise
    else:
        auditor.emit("policy_push", pipeline=pipeline, source=Path(source).name, caller=by,
                     policy_version=version)  # fmt: skip
    finally:
        auditor.close()
    return version


def scale_pipeline(pipeline: str, workers: int, *, address: str | None = None) -> int:
    """Grow or shrink a running pipeline's worker pool; it resizes at the next chunk boundary."""
    return _call(pipeline, address, "scale", workers)


def _call(pipeline: str, address: str | None, method: str, *args: Any) -> int:
    """Call the named control actor of `pipeline` (joining the cluster first if needed); a list
    answer is the located problems of a refused request."""
    import ray

    from raymask.errors import InputError

    if not ray.is_initialized():
        ray.init(
            address=address or "auto",
            namespace=NAMESPACE,
            logging_level="ERROR",
            log_to_driver=False,
        )
    try:
        control = ray.get_actor(actor_name(pipeline), namespace=NAMESPACE)
    except ValueError:
        raise InputError(f"no running pipeline named '{pipeline}'") from None
    result = ray.get(getattr(control, method).remote(*args))
    if isinstance(result, list):
        raise PolicyError(result)
    return int(result)
