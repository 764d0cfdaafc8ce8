"""Compile a stream's policy into a plan: the field paths to locate and, per role, the ops to run.

Refuses, with located messages, what this version cannot run yet (a technique or format that
the schema accepts but no kernel implements), so a policy never half-applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raymask.errors import PolicyError
from raymask.kernels.codecs.paths import PathTree, build_tree
from raymask.policy.keys import Keyring
from raymask.policy.registry import REGISTRY, privacy_cost
from raymask.policy.schema import Budget, Detect, LeakCheck, Policy, Stream

__all__ = ["FieldOp", "ViewPlan", "StreamPlan", "compile_stream", "BUILT_FORMATS", "DEFAULT_ROLE"]

BUILT_FORMATS = ("ndjson", "csv", "xml", "protobuf")
DEFAULT_ROLE = "default"


@dataclass(frozen=True)
class FieldOp:
    index: int  # leaf index in StreamPlan.paths
    path: str
    technique: str
    spec: object


@dataclass(frozen=True)
class ViewPlan:
    role: str
    ops: tuple[FieldOp, ...]  # every named field, keep included, in policy order

    @property
    def changing(self) -> tuple[FieldOp, ...]:
        return tuple(op for op in self.ops if op.technique != "keep")


@dataclass(frozen=True)
class StreamPlan:
    stream: str
    version: int
    format: str
    key_path: str
    key_index: int
    paths: tuple[str, ...]  # the policy's fields, then the key if it is not one of them
    named: int  # how many of `paths` the policy names (the key may be extra)
    unknown_fields: str
    delimiter: str
    tree: PathTree = field(repr=False)
    views: dict[str, ViewPlan] = field(repr=False)
    budget: Budget | None = None  # per-subject local-DP allowance
    route_path: str = ""  # what the router shards by: the budget's subject, else the key
    route_index: int = 0
    unknown_detect: Detect | None = None  # unknown_fields: detect: what to find, how to replace
    leak_check: LeakCheck | None = None  # sampled scan of every output view
    format_options: dict = field(default_factory=dict, repr=False)  # the stream's xml:/protobuf:

    @property
    def private(self) -> bool:
        """Does any view add local-DP noise?"""
        return any(privacy_cost(op.spec) is not None for v in self.views.values() for op in v.ops)

    def view(self, role: str | None) -> ViewPlan:
        """The role's view; a role the policy does not name gets the default (strictest) one."""
        return self.views.get(role or DEFAULT_ROLE, self.views[DEFAULT_ROLE])

    def check_keys(self, keyring: Keyring) -> None:
        """KeyringError for the first key that is missing or has the wrong length."""
        from raymask.policy.registry import check_key

        for v in self.views.values():
            for op in v.ops:
                check_key(op.technique, op.spec, keyring)

    def key_ids(self) -> set[str]:
        ids = set()
        for v in self.views.values():
            for op in v.ops:
                k = getattr(op.spec, "key", None)
                if isinstance(k, str):
                    ids.add(k)
        if self.budget is not None:
            ids.add(self.budget.key)
        if self.unknown_detect is not None and self.unknown_detect.key is not None:
            ids.add(self.unknown_detect.key)
        return ids


# what unknown_fields cannot do yet per format, and what to use instead
UNKNOWN_NOT_BUILT = {
    ("protobuf", "detect"): ("keep", "drop"),
}


def compile_stream(policy: Policy, stream: str, source: str = "<policy>") -> StreamPlan:
    """Plan for `stream`; PolicyError lists every part this version cannot run."""
    if stream not in policy.streams:
        known = ", ".join(sorted(policy.streams))
        raise PolicyError([f"{source}: no stream '{stream}' (streams: {known})"])
    s: Stream = policy.streams[stream]
    problems = []
    where = f"{source}: streams.{stream}"
    if s.format not in BUILT_FORMATS:
        problems.append(
            f"{where}.format: {s.format} is not supported yet (supported: {', '.join(BUILT_FORMATS)})"
        )
    if (s.format, s.unknown_fields) in UNKNOWN_NOT_BUILT:
        problems.append(
            f"{where}.unknown_fields: {s.unknown_fields} is not supported for {s.format} yet "
            f"(use {' or '.join(UNKNOWN_NOT_BUILT[s.format, s.unknown_fields])})"
        )
    paths = list(s.fields)
    extra = [s.key] + [
        getattr(spec, attr)
        for specs in [s.fields, *s.views.values()]
        for spec in specs.values()
        for attr in ("tweak_field", "subject_field")
        if getattr(spec, attr, None)
    ]
    route = s.budget.subject if s.budget is not None and s.budget.subject else s.key
    extra.append(route)
    for p in extra:
        if p not in paths:
            paths.append(p)
    index = {p: i for i, p in enumerate(paths)}

    def ops_for(overrides: dict[str, object], label: str) -> tuple[FieldOp, ...]:
        ops = []
        for path, spec in s.fields.items():
            spec = overrides.get(path, spec)
            tech = spec.technique  # type: ignore[attr-defined]
            if not getattr(spec, "built", True) or tech not in REGISTRY:
                problems.append(
                    f"{where}.{label}.{path}: technique {tech} is not supported yet "
                    f"(supported: {', '.join(REGISTRY)})"
                )
            ops.append(FieldOp(index[path], path, tech, spec))
        return tuple(ops)

    views = {DEFAULT_ROLE: ViewPlan(DEFAULT_ROLE, ops_for({}, "fields"))}
    for role, overrides in s.views.items():
        views[role] = ViewPlan(role, ops_for(overrides, f"views.{role}"))
    try:
        tree = build_tree(paths)
    except ValueError:
        problems.append(
            f"{where}: a tweak_field or subject_field overlaps another field (a field cannot contain another)"
        )
    if problems:
        raise PolicyError(sorted(set(problems)))
    return StreamPlan(
        stream=stream,
        version=policy.version,
        format=s.format,
        key_path=s.key,
        key_index=index[s.key],
        paths=tuple(paths),
        named=len(s.fields),
        unknown_fields=s.unknown_fields,
        delimiter=s.delimiter,
        tree=tree,
        views=views,
        budget=s.budget,
        route_path=route,
        route_index=index[route],
        unknown_detect=(
            (s.unknown_detect or Detect(technique="detect"))
            if s.unknown_fields == "detect"
            else None
        ),
        leak_check=s.leak_check,
        format_options=opts.model_dump()
        if (opts := getattr(s, s.format, None)) is not None
        else {},
    )
