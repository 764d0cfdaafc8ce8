"""Reveal: fpe and encrypt outputs turn back into the clear values; tokens never do."""

from __future__ import annotations

import json

import pytest

from raymask.cluster.pipeline import mask_file
from raymask.cluster.reveal import reveal_values
from raymask.errors import PolicyError
from raymask.loadtest.traffic import generate_bytes, luhn_valid
from raymask.policy.keys import Key, Keyring, add_key_version
from tests.conftest import EXAMPLES

POLICY = EXAMPLES / "payments.yaml"


def _run(tmp_path, keyring, role, n=300):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", n, seed=17))
    dst = tmp_path / f"out-{role}.ndjson"
    mask_file(POLICY, "payments", src, dst, role=role, keyring=keyring, local=True, workers=2)
    ins = [json.loads(x) for x in src.read_text().splitlines()]
    outs = [json.loads(x) for x in dst.read_text().splitlines()]
    return ins, outs


def test_fraud_view_card_numbers_are_luhn_valid_and_reveal_to_the_originals(tmp_path, keyring):
    ins, outs = _run(tmp_path, keyring, "fraud")
    masked = [o["card"]["number"] for o in outs]
    assert all(luhn_valid(c) for c in masked)
    assert all(
        m != i["card"]["number"] and m[-4:] == i["card"]["number"][-4:]
        for m, i in zip(masked, ins, strict=True)
    )
    res = reveal_values(POLICY, "payments", "card.number", masked, keyring=keyring, role="fraud")
    assert res.values == [i["card"]["number"] for i in ins] and set(res.errors) == {None}


def test_support_view_names_are_sealed_and_reveal_after_a_key_rotation(tmp_path, keyring):
    ins, outs = _run(tmp_path, keyring, "support", n=50)
    sealed = [o["customer"]["name"] for o in outs]
    assert all(s.startswith("v1.") for s in sealed)
    # rotate: new output uses v2; v1 outputs still reveal
    rotated = Keyring([*(keyring.get(k) for k in keyring.ids()), Key("sealed", 2, b"S" * 32)])
    ins2, outs2 = _run(tmp_path, rotated, "support", n=50)
    assert all(o["customer"]["name"].startswith("v2.") for o in outs2)
    both = sealed + [o["customer"]["name"] for o in outs2]
    res = reveal_values(POLICY, "payments", "customer.name", both, keyring=rotated, role="support")
    assert res.values == [i["customer"]["name"] for i in ins + ins2]
    # a value altered in transit is refused, not revealed wrongly
    bad = sealed[0][:-3] + ("AAA" if not sealed[0].endswith("AAA") else "BBB")
    res = reveal_values(POLICY, "payments", "customer.name", [bad], keyring=rotated, role="support")
    assert res.values == [None] and "does not decrypt" in res.errors[0]


def test_tokens_and_masks_cannot_be_revealed(keyring):
    with pytest.raises(PolicyError, match="uses tokenize, which cannot be reversed"):
        reveal_values(POLICY, "payments", "account.id", ["acc_x"], keyring=keyring)
    with pytest.raises(PolicyError, match="uses mask, which cannot be reversed"):
        reveal_values(POLICY, "payments", "card.number", ["**** 1111"], keyring=keyring)


def test_key_file_rotation_keeps_old_versions(tmp_path):
    p = tmp_path / "k.json"
    add_key_version(p, "tok", new_id=True)
    first = Keyring.from_file(p).get("tok")
    add_key_version(p, "tok")
    ring = Keyring.from_file(p)
    assert ring.versions("tok") == [1, 2] and ring.get("tok", 1).material == first.material
    assert (p.stat().st_mode & 0o777) == 0o600
