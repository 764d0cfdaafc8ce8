"""Policy validation: good policies load; each bad one fails with its located message."""

from __future__ import annotations

import pytest

from raymask.errors import PolicyError
from raymask.policy.compile import compile_stream
from raymask.policy.loader import load_policy, parse_policy
from raymask.policy.schema import Policy
from tests.conftest import EXAMPLES

GOOD = """\
version: 3
streams:
  payments:
    format: ndjson
    key: account.id
    unknown_fields: keep
    fields:
      account.id:     {technique: tokenize, key: tok, encoding: base32, length: 16}
      card.number:    {technique: mask, preset: card}
      customer.email: {technique: mask, preset: email}
      customer.name:  {technique: redact}
      amount:         {technique: keep}
    views:
      ops:
        customer.email: keep
"""


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_policies_load_and_compile(path):
    pol = load_policy(path)
    for stream in pol.streams:
        plan = compile_stream(pol, stream, path.name)
        assert plan.paths[plan.key_index] == pol.streams[stream].key


def test_good_policy_has_the_documented_shape():
    pol = parse_policy(GOOD, "p.yaml")
    s = pol.streams["payments"]
    assert pol.version == 3
    assert s.fields["card.number"].preset == "card"
    assert s.views["ops"]["customer.email"].technique == "keep"  # shorthand string
    plan = compile_stream(pol, "payments")
    assert plan.view("ops").ops[2].technique == "keep"
    assert plan.view("nobody").role == "default"  # unnamed role -> the strictest view
    assert plan.view(None).ops[2].technique == "mask"


def _sub(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    # a bound on a mask parameter, located on the field's line
    (
        _sub("preset: card", "keep_last: 99"),
        "p.yaml:9: streams.payments.fields.card.number.keep_last: must be <= 64",
    ),
    # unknown technique names the valid ones
    (
        _sub("technique: redact", "technique: scramble"),
        "p.yaml:11: streams.payments.fields.customer.name: unknown technique; expected one of: keep, redact, mask",
    ),
    # token longer than the encoded digest
    (
        _sub("length: 16", "length: 60"),
        "p.yaml:8: streams.payments.fields.account.id: length must be <= 52 for encoding base32",
    ),
    # key material pasted where a key id belongs
    (
        _sub("key: tok,", "key: 00112233445566778899aabbccddeeff,"),
        "p.yaml:8: streams.payments.fields.account.id.key: looks like key material",
    ),
    # a view may only override fields the stream names
    (
        _sub("customer.email: keep", "customer.phone: keep"),
        "view ops names field customer.phone, which is not under fields",
    ),
    # unknown format
    (
        _sub("format: ndjson", "format: parquet"),
        "p.yaml:4: streams.payments.format: must be one of 'ndjson', 'csv', 'xml' or 'protobuf'",
    ),
    # typo in a parameter name
    (
        _sub("preset: card", "preset: card, keep_lst: 2"),
        "p.yaml:9: streams.payments.fields.card.number.keep_lst: unknown setting",
    ),
    # version must be positive
    (_sub("version: 3", "version: 0"), "p.yaml:1: version: must be >= 1"),
    # a field may not contain another
    (
        _sub(
            "      amount:         {technique: keep}\n",
            "      amount: keep\n      customer: redact\n",
        ),
        "fields customer and customer.email overlap",
    ),
    # mask character is one code point
    (
        _sub("preset: card", "char: '**'"),
        "p.yaml:9: streams.payments.fields.card.number.char: must be exactly one character",
    ),
    # the sharding key is required
    (_sub("    key: account.id\n", ""), "p.yaml:3: streams.payments.key: required"),
    # duplicate YAML keys are refused, not silently merged
    (
        _sub("      ops:\n", "      ops:\n        customer.email: redact\n"),
        "p.yaml:16: streams.payments.views.ops.customer.email: duplicate key",
    ),
    # a preset fixes the kept counts
    (
        _sub("preset: card", "preset: card, keep_last: 6"),
        "preset card fixes keep_first, keep_last and mode",
    ),
    # unknown_fields choices
    (
        _sub("unknown_fields: keep", "unknown_fields: hide"),
        "p.yaml:6: streams.payments.unknown_fields: must be one of 'keep', 'drop' or 'detect'",
    ),
    # unknown top-level setting
    (GOOD + "owner: me\n", "p.yaml:16: owner: unknown setting"),
    # broken YAML says where
    ("version: [\n", "p.yaml:2: invalid YAML"),
    # a policy is a mapping
    ("- 1\n- 2\n", "p.yaml:1: a policy is a mapping"),
    # noise: bounds in order
    (
        _sub("{technique: keep}", "{technique: noise, epsilon: 1, lo: 10, hi: 10}"),
        "p.yaml:12: streams.payments.fields.amount: needs finite bounds with lo < hi",
    ),
    # noise: the Gaussian needs its delta, the Laplace takes none
    (
        _sub(
            "{technique: keep}", "{technique: noise, mechanism: gaussian, epsilon: 1, lo: 0, hi: 9}"
        ),
        "p.yaml:12: streams.payments.fields.amount: mechanism gaussian needs delta",
    ),
    (
        _sub("{technique: keep}", "{technique: noise, epsilon: 1, delta: 0.001, lo: 0, hi: 9}"),
        "p.yaml:12: streams.payments.fields.amount: mechanism laplace takes no delta",
    ),
    # noise: integer noise on whole-number bounds
    (
        _sub("{technique: keep}", "{technique: noise, epsilon: 1, lo: 0, hi: 9.5, integer: true}"),
        "p.yaml:12: streams.payments.fields.amount: integer noise needs whole-number bounds",
    ),
    # noise: epsilon is positive
    (
        _sub("{technique: keep}", "{technique: noise, epsilon: 0, lo: 0, hi: 9}"),
        "p.yaml:12: streams.payments.fields.amount.epsilon: must be > 0",
    ),
    # randomized response: distinct categories
    (
        _sub(
            "{technique: keep}", "{technique: randomized_response, epsilon: 1, categories: [a, a]}"
        ),
        "streams.payments.fields.amount.categories: needs at least 2 distinct categories",
    ),
    # budget: zcdp turns rho into (epsilon, delta), so it needs a delta
    (
        GOOD + "    budget: {epsilon: 4, key: ledger, composition: zcdp}\n",
        "p.yaml:16: streams.payments.budget: composition zcdp needs delta > 0",
    ),
    # budget: the checkpoint key is a key id
    (
        GOOD + "    budget: {epsilon: 4}\n",
        "p.yaml:16: streams.payments.budget.key: required",
    ),
    # aggregates: each metric's own parameter, and no other's
    (
        GOOD + "    aggregates:\n      a:\n        time: ts\n        window: {size: 1m}\n"
        "        group_by: currency\n        metrics:\n          - {op: count, epsilon: 1}\n"
        "          - {op: histogram, field: amount, lo: 0, hi: 9, epsilon: 1}\n",
        "streams.payments.aggregates.a.metrics.1: histogram needs bins",
    ),
    (
        GOOD + "    aggregates:\n      a:\n        time: ts\n        window: {size: 1m}\n"
        "        group_by: currency\n        metrics:\n          - {op: count, epsilon: 1}\n"
        "          - {op: quantiles, field: amount, lo: 0, hi: 9, quantiles: [0.5, 1], epsilon: 1}\n",
        "streams.payments.aggregates.a.metrics.1: quantiles must lie strictly between 0 and 1",
    ),
    (
        GOOD + "    aggregates:\n      a:\n        time: ts\n        window: {size: 1m}\n"
        "        group_by: currency\n        metrics:\n          - {op: count, epsilon: 1}\n"
        "          - {op: top_k, field: amount, k: 3, bins: 4, epsilon: 1}\n",
        "streams.payments.aggregates.a.metrics.1: bins belongs to histogram, not top_k",
    ),
    # key id with characters a key id cannot have
    (
        _sub("key: tok,", "key: 'tok/../x',"),
        "p.yaml:8: streams.payments.fields.account.id.key: has characters that are not allowed here",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_policy_is_refused_with_a_located_message(text, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert any(message in p for p in info.value.problems), info.value.problems


def test_messages_never_quote_values():
    secret = "00112233445566778899aabbccddeeff"
    with pytest.raises(PolicyError) as info:
        parse_policy(_sub("key: tok,", f"key: {secret},"), "p.yaml")
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # every technique and format is built; what a format cannot do yet is refused here
        (
            "format: ndjson\n    key: account.id\n    unknown_fields: keep",
            "format: protobuf\n    protobuf: {descriptor_set: x.pb, message: a.B}\n"
            "    key: account.id\n    unknown_fields: detect",
            "streams.payments.unknown_fields: detect is not supported for protobuf yet "
            "(use keep or drop)",
        ),
    ],
)
def test_what_a_format_cannot_do_yet_is_accepted_by_schema_and_refused_at_compile(
    old, new, message
):
    pol = parse_policy(_sub(old, new), "p.yaml")
    with pytest.raises(PolicyError) as info:
        compile_stream(pol, "payments", "p.yaml")
    assert any(message in p for p in info.value.problems), info.value.problems


def test_unknown_stream_names_the_known_ones():
    with pytest.raises(PolicyError, match=r"no stream 'card' \(streams: payments\)"):
        compile_stream(parse_policy(GOOD), "card")


def test_json_schema_lists_every_technique():
    schema = Policy.model_json_schema()
    text = str(schema)
    for t in ("keep", "redact", "mask", "tokenize", "fpe", "detect", "randomized_response"):
        assert f"'{t}'" in text


def test_missing_policy_file_is_one_clear_line(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "nope.yaml")
