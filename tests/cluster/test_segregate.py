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


@pytest.mark.kafka
@pytest.mark.integration
def test_a_kafka_run_writes_its_vault_topic_and_reveal_reads_it(kafka_broker, ray_session, ring):
    """On Kafka the vault is a topic ({topic}.segregated.vault, Arrow IPC messages tagged with their source
    offsets); the output topics carry only references, and `reveal --vault kafka://...` opens
    them for the right field."""
    import uuid

    from raymask.cluster.kafka_pipeline import run_kafka
    from raymask.loadtest.kafka_traffic import produce_traffic, read_topic

    topic = f"seg-{uuid.uuid4().hex[:8]}"
    n = produce_traffic(kafka_broker, topic, "payments", 3000, key_path="account.id",
                        partitions=3, seed=8)  # fmt: skip
    pol = parse_policy(POLICY, "p.yaml")
    s = run_kafka(pol, "payments", topic, bootstrap=kafka_broker, keyring=ring, idle_s=2,
                  consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 300})  # fmt: skip
    assert s.records_in == n and s.balanced and s.vault_topic == f"{topic}.segregated.vault"
    src = {(m.partition, m.offset): json.loads(m.value) for m in read_topic(kafka_broker, topic, 3)}
    names = [r["customer"]["name"] for r in src.values()]
    assert s.vault_rows == sum(x is not None for x in names)
    out = read_topic(kafka_broker, s.topics["default"], 3, expect=n)
    refs, want = [], []
    for m in out:
        text = m.value.decode()
        rec = json.loads(text)
        orig = src[(m.partition, int(m.headers["raymask.src.offset"]))]["customer"]["name"]
        assert orig is None or orig not in text
        refs.append(rec["customer"]["name"])
        want.append(orig)
    vault = f"kafka://{kafka_broker}/{s.vault_topic}"
    got = reveal_values(pol, "payments", "customer.name", refs, keyring=ring, vault=vault)
    assert got.values == want
    assert reveal_vault(vault, pa.array(refs[:5]), "note", ring, "vault").values == [None] * 5
