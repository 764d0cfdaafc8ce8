"""segregate: the value leaves for the vault, the record keeps a reference; reveal reads it back
from the vault for the right key and field only, and a sealed value moved to another reference
does not open."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymask.cluster.pipeline import mask_file
from raymask.cluster.reveal import reveal_values, reveal_vault
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.keys import Key
from raymask.policy.loader import parse_policy

POLICY = """
version: 1
streams:
  payments:
    format: ndjson
    key: account.id
    fields:
      account.id:    {technique: tokenize, key: tok, length: 16}
      customer.name: {technique: segregate, key: vault}
      note:          redact
"""


@pytest.fixture()
def ring(keyring):
    keyring.add(Key("vault", 1, b"v" * 64))
    return keyring


def test_values_go_to_the_vault_and_come_back_for_their_reference_only(tmp_path, ring):
    src = tmp_path / "in.ndjson"
    data = generate_bytes("payments", 2000, seed=8)
    src.write_bytes(data)
    out = tmp_path / "out.ndjson"
    pol = parse_policy(POLICY, "p.yaml")
    s = mask_file(pol, "payments", src, out, keyring=ring, local=True,
                  dead_letter_key="deadletter")  # fmt: skip
    names = [json.loads(x)["customer"]["name"] for x in data.splitlines()]
    refs = [json.loads(x)["customer"]["name"] for x in out.read_bytes().splitlines()]
    assert s.vault == f"{out}.vault" and s.vault_rows == sum(n is not None for n in names)
    assert all(r.startswith("vault:") and len(r) == 32 for r in refs if r is not None)
    text = out.read_text()
    assert not any(n in text for n in names if n)
    got = reveal_values(pol, "payments", "customer.name", refs, keyring=ring, vault=s.vault)
    assert got.values == names
    # one reference per account and name: equal names of different accounts get different ones
    vault = pq.read_table(s.vault)
    recs = [json.loads(x) for x in data.splitlines()]
    pairs = {(r["account"]["id"], r["customer"]["name"]) for r in recs if r["customer"]["name"]}
    assert len(set(vault.column("ref").to_pylist())) == len(pairs) < vault.num_rows
    assert len({n for _, n in pairs}) < len(pairs)  # the data has names shared by accounts
    # a sealed value moved under another reference does not open
    swapped = vault.set_column(vault.schema.get_field_index("sealed"), "sealed",
                               pa.concat_arrays([vault.column("sealed").chunk(0)[1:2],
                                                 vault.column("sealed").chunk(0)[0:1],
                                                 vault.column("sealed").chunk(0)[2:]]))  # fmt: skip
    bad = tmp_path / "bad.vault"
    bad.mkdir()
    pq.write_table(swapped, bad / "part.parquet")
    first = vault.column("ref").to_pylist()[:3]
    r = reveal_vault(bad, pa.array(first), "customer.name", ring, "vault")
    assert r.values[:2] == [None, None] and r.values[2] is not None
    assert r.errors[0] == "no such reference in the vault"
    # the wrong field does not open it either
    assert reveal_vault(s.vault, pa.array(first), "note", ring, "vault").values == [None] * 3
