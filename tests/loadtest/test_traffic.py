"""The traffic generator: deterministic, realistic (valid cards, IBANs, IPs), skewed, ordered."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import re
from collections import Counter, defaultdict

import pytest

from raymask.loadtest.traffic import PROFILES, generate_bytes, iban_valid, luhn_valid


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("profile", PROFILES)
def test_same_seed_same_bytes_other_seed_other_bytes(profile, fmt):
    a = generate_bytes(profile, 2000, seed=4, fmt=fmt)
    assert a == generate_bytes(profile, 2000, seed=4, fmt=fmt)
    assert a != generate_bytes(profile, 2000, seed=5, fmt=fmt)


def _ndjson(profile: str, n: int = 5000) -> list[dict]:
    return [json.loads(x) for x in generate_bytes(profile, n, seed=8).decode().splitlines()]


def test_payments_carry_valid_cards_ibans_emails_and_ips():
    recs = _ndjson("payments")
    assert all(luhn_valid(r["card"]["number"]) for r in recs)
    assert all(iban_valid(r["account"]["iban"]) for r in recs)
    assert all(re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", r["customer"]["email"]) for r in recs)
    for r in recs:
        ipaddress.IPv4Address(r["client_ip"])
        assert 1 <= int(r["card"]["expiry"][:2]) <= 12
    assert any(r["customer"]["phone"] is None for r in recs)  # some records lack a phone
    assert any(not r["customer"]["name"].isascii() for r in recs)  # non-ASCII names
    # free text carries PII that a field rule does not see
    notes = " ".join(r["note"] for r in recs)
    assert "@" in notes and "DE" in notes


def test_iot_and_logs_carry_ipv6_macs_gps_and_secrets():
    for r in _ndjson("iot"):
        ipaddress.IPv6Address(r["net"]["ipv6"])
        ipaddress.IPv4Address(r["net"]["ipv4"])
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", r["device"]["mac"])
        assert -90 <= r["gps"]["lat"] <= 90 and -180 <= r["gps"]["lon"] <= 180
    msgs = " ".join(r["message"] for r in _ndjson("logs"))
    assert re.search(r"AKIA[A-Z]{16}", msgs) and re.search(r"ghp_[a-z0-9]{36}", msgs)


@pytest.mark.parametrize(
    ("profile", "key"),
    [("payments", ("account", "id")), ("iot", ("device", "id")), ("logs", ("user", "id"))],
)
def test_keys_are_skewed_and_seq_counts_each_key_from_zero(profile, key):
    recs = _ndjson(profile, 20_000)
    keys = [r[key[0]][key[1]] for r in recs]
    counts = Counter(keys)
    top = sum(c for _, c in counts.most_common(max(1, len(counts) // 100)))
    assert top > 0.05 * len(keys), "the hottest 1% of keys should carry well over 1% of records"
    seen: dict[str, int] = defaultdict(int)
    for k, r in zip(keys, recs, strict=True):
        assert r["seq"] == seen[k]
        seen[k] += 1


def test_csv_has_the_same_records_as_ndjson():
    rows = list(
        csv.DictReader(io.StringIO(generate_bytes("payments", 300, seed=3, fmt="csv").decode()))
    )
    recs = [json.loads(x) for x in generate_bytes("payments", 300, seed=3).decode().splitlines()]
    for row, rec in zip(rows, recs, strict=True):
        assert row["card.number"] == rec["card"]["number"]
        assert row["customer.phone"] == (rec["customer"]["phone"] or "")
        assert float(row["amount"]) == rec["amount"]
