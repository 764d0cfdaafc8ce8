"""The `detect` technique through a worker: per-type replacements, tokens joinable with the
tokenize technique, numbers kept as numbers when nothing is found, located policy errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.kernels import detect as detect_kernel
from raymask.kernels import tokenize as tok_kernel
from raymask.kernels.codecs.formats import NdjsonFormat
from raymask.policy.keys import Key, Keyring
from raymask.policy.schema import DETECT_TYPES, Detect, Policy

RING = Keyring([Key("tok", 1, b"t" * 32)])


def _policy(fields: dict, **stream) -> Policy:  # noqa: ANN003
    return Policy.model_validate(
        {
            "version": 4,
            "streams": {"s": {"format": "ndjson", "key": "id", "fields": fields, **stream}},
        }
    )


def _mask(pol: Policy, lines: list[str]):  # noqa: ANN202
    fmt = NdjsonFormat()
    core = MaskCore(pol, "s", RING, fmt)
    data = np.frombuffer(("\n".join(lines) + "\n").encode(), np.uint8)
    routed = RouterCore(core.plan, fmt, 1).route(data, 1)
    return core.process(routed.batch, None, routed.shards[0])


def test_schema_types_are_the_kernels_types():
    assert DETECT_TYPES == detect_kernel.TYPES


def test_default_and_per_type_replacements_in_a_note_field():
    lines = [
        json.dumps({"id": "a", "note": "mail bob@example.com card 4111 1111 1111 1111"}),
        json.dumps({"id": "b", "note": "key AKIAIOSFODNN7EXAMPLE from 10.1.2.3"}),
        json.dumps({"id": "c", "note": None}),
        json.dumps({"id": "d"}),
        json.dumps({"id": "e", "note": "nothing here \u00e9"}),
    ]
    spec = {"technique": "detect", "replace": {"card": "[card]", "secret": "***"}}
    out = _mask(_policy({"note": spec}), lines)
    got = [json.loads(r).get("note", "ABSENT") for r in out.records.to_pylist()]
    assert got == [
        "mail <EMAIL> card [card]",
        "key *** from <IPV4>",
        None,
        "ABSENT",
        "nothing here \u00e9",
    ]
    assert len(out.dead_rows) == 0


def test_token_replacement_is_the_tokenize_techniques_token():
    pol = _policy({
        "email": {"technique": "tokenize", "key": "tok", "length": 16, "prefix": "e_"},
        "note": {"technique": "detect", "types": ["email"], "replace": {"email": "token"},
                 "key": "tok", "length": 16, "prefix": "e_"},
    })  # fmt: skip
    lines = [json.dumps({"id": "a", "email": "ann@ex.io", "note": "write to ann@ex.io today"})]
    rec = json.loads(_mask(pol, lines).records.to_pylist()[0])
    assert rec["note"] == f"write to {rec['email']} today"
    assert rec["email"] == tok_kernel.tokenize(pa.array(["ann@ex.io"]), b"t" * 32, length=16,
                                               prefix="e_")[0].as_py()  # fmt: skip


def test_numbers_stay_numbers_unless_something_is_found():
    lines = [json.dumps({"id": "a", "n": 4111111111111111}), json.dumps({"id": "b", "n": 42})]
    out = _mask(_policy({"n": {"technique": "detect"}}), lines)
    assert [json.loads(r)["n"] for r in out.records.to_pylist()] == ["<CARD>", 42]


def test_user_pattern_with_validator():
    spec = {"technique": "detect", "types": ["email"],
            "patterns": [{"name": "member_id", "regex": r"M-[0-9]{6}"},
                         {"name": "acct", "regex": r"[0-9]{16}", "validator": "luhn"}]}  # fmt: skip
    lines = [json.dumps({"id": "a", "note": "M-123456 x 4111111111111111 y 4111111111111112"})]
    rec = json.loads(_mask(_policy({"note": spec}), lines).records.to_pylist()[0])
    assert rec["note"] == "<MEMBER_ID> x <ACCT> y 4111111111111112"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replace": {"emial": "x"}}, "replace names type emial"),
        ({"replace": {"email": "token"}}, "replace uses token: give the key id"),
        ({"types": ["email", "nope"]}, "types.1"),
        ({"patterns": [{"name": "x", "regex": "("}]}, "does not compile"),
        ({"patterns": [{"name": "x", "regex": "a*"}]}, "matches the empty string"),
        ({"patterns": [{"name": "x", "regex": r"(a)\1"}]}, "RE2 does not take it"),
        ({"patterns": [{"name": "email", "regex": "a"}]}, "not a built-in type"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(spec: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        Detect.model_validate({"technique": "detect", **spec})
