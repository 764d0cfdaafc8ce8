"""Read a policy file (YAML or JSON) into a validated `Policy`, with located error messages.

Every problem is reported as ``FILE:LINE: path.to.entry: what is wrong``; the line comes from the
YAML node the path points at. Messages never quote a value from the file (a value could be a
secret pasted in the wrong place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raymask.errors import PolicyError
from raymask.policy.schema import TECHNIQUES, Policy

__all__ = ["load_policy", "parse_policy", "validate_data"]


def _compose(text: str, name: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """YAML text -> plain data, plus the 1-based line of every mapping key and value by path."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise PolicyError([f"{name}:{line}: invalid YAML: {problem}"]) from None
    lines: dict[tuple[str, ...], int] = {}
    problems: list[str] = []
    loader = yaml.SafeLoader("")

    def build(n: yaml.Node, path: tuple[str, ...]) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in n.value:
                key = str(loader.construct_object(k))
                kp = path + (key,)
                if key in out:
                    problems.append(
                        f"{name}:{k.start_mark.line + 1}: {'.'.join(kp)}: duplicate key"
                    )
                lines[kp] = k.start_mark.line + 1
                out[key] = build(v, kp)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, path + (str(i),)) for i, v in enumerate(n.value)]
        return loader.construct_object(n)

    data = build(node, ()) if node is not None else None
    if problems:
        raise PolicyError(problems)
    return data, lines


_FRIENDLY = {
    "less_than_equal": lambda c: f"must be <= {c.get('le')}",
    "greater_than_equal": lambda c: f"must be >= {c.get('ge')}",
    "greater_than": lambda c: f"must be > {c.get('gt')}",
    "less_than": lambda c: f"must be < {c.get('lt')}",
    "float_type": lambda c: "must be a number",
    "float_parsing": lambda c: "must be a number",
    "extra_forbidden": lambda c: "unknown setting",
    "missing": lambda c: "required",
    "string_pattern_mismatch": lambda c: "has characters that are not allowed here",
    "literal_error": lambda c: f"must be one of {c.get('expected')}",
    "int_type": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "bool_type": lambda c: "must be true or false",
    "bool_parsing": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string",
    "dict_type": lambda c: "must be a mapping",
    "model_type": lambda c: "must be a mapping",
    "too_short": lambda c: "must not be empty",
    "string_too_short": lambda c: "must not be empty",
    "string_too_long": lambda c: f"must be at most {c.get('max_length')} characters",
    "union_tag_invalid": lambda c: f"unknown technique; expected one of: {', '.join(TECHNIQUES)}",
    "union_tag_not_found": lambda c: "needs a technique",
}


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[str, ...]:
    """Drop pydantic's union-tag and validator entries from `loc`, following the raw data."""
    out: list[str] = []
    cur = data
    for part in loc:
        part = str(part)
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and cur.get("technique") == part:
            continue
        elif isinstance(cur, str) and part in TECHNIQUES:
            continue
        elif part.startswith("function-") or part in TECHNIQUES:
            continue
        else:
            out.append(part)
            cur = None
    return tuple(out)


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in _FRIENDLY:
        return _FRIENDLY[kind](ctx)
    if kind == "value_error":
        return str(ctx.get("error", err.get("msg", "invalid")))
    msg = str(err.get("msg", "invalid"))
    return msg[0].lower() + msg[1:] if msg else "invalid"


def validate_data(data: Any, name: str = "<policy>") -> Policy:
    """Validate an already-parsed policy (a dict); PolicyError lists every problem by path."""
    return _validate(data, {}, name)


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    """Validate policy text; raise PolicyError with every located problem."""
    data, lines = _compose(text, name)
    return _validate(data, lines, name)


def _validate(data: Any, lines: dict[tuple[str, ...], int], name: str) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError([f"{name}:1: a policy is a mapping with version and streams"])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            path = _clean_loc(tuple(err["loc"]), data)
            line = None
            for cut in range(len(path), -1, -1):
                if path[:cut] in lines:
                    line = lines[path[:cut]]
                    break
            where = ".".join(path) or "policy"
            at = f"{name}:{line}" if line else name
            problems.append(f"{at}: {where}: {_message(err)}")
        raise PolicyError(sorted(set(problems), key=_line_of)) from None


def _line_of(problem: str) -> int:
    part = problem.split(":")[1] if problem.count(":") >= 2 else ""
    return int(part) if part.strip().isdigit() else 0


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; PolicyError names the file and line of every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{p}: no such policy file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{p}: cannot read policy file ({type(exc).__name__})"]) from None
    return parse_policy(text, p.name)
