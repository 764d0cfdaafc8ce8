"""Detection in free text: exact spans on hand cases, stdlib oracles on random inputs, splicing."""

from __future__ import annotations

import ipaddress
import random
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels._validators import IBAN_LENGTHS
from raymask.kernels.detect import TYPES, Pattern, detect, span_texts, splice, type_codes

AWS = "AKIAIOSFODNN7EXAMPLE"
GHP = "ghp_" + "a1B2c3D4e5" * 3 + "F6g7h8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

# (text, [(type, the exact text of the span)]) in order; a comment says what the case is about
CASES = [
    ("mail bob.smith@example.com now", [("email", "bob.smith@example.com")]),
    ("end of sentence: x@mail.example.org.", [("email", "x@mail.example.org")]),
    ("https://example.com/c?to=ann@ex.io&x=1", [("email", "ann@ex.io")]),  # email inside a URL
    ("mailto:ann+tag@ex-ample.co.uk", [("email", "ann+tag@ex-ample.co.uk")]),
    ("not an email: a@b, @home, x@localhost", []),  # no dot-separated alphabetic TLD
    ("pay 4111 1111 1111 1111 now", [("card", "4111 1111 1111 1111")]),
    ("pay 4111-1111-1111-1111.", [("card", "4111-1111-1111-1111")]),
    ("amex 378282246310005", [("card", "378282246310005")]),
    ("luhn fails 4111 1111 1111 1112", []),  # a card lookalike that fails Luhn
    ("mixed seps 4111 1111-1111 1111", []),  # one separator kind per number
    ("epoch ms 1700000000000 id 9111111111111111", []),  # no card issuer starts with 1 or 9
    ("card then year 4111 1111 1111 1111 2029", [("card", "4111 1111 1111 1111")]),
    ("in word x4111111111111111", []),
    ("iban DE89 3704 0044 0532 0130 00 ok", [("iban", "DE89 3704 0044 0532 0130 00")]),
    ("GB82WEST12345698765432", [("iban", "GB82WEST12345698765432")]),
    ("bad check DE88370400440532013000", []),  # mod-97 fails
    ("bad length DE8937040044053201300", []),  # 21 characters, Germany has 22
    ("call +1 (555) 123-4567 or +44 20 7946 0958", [("phone", "+1 (555) 123-4567"),
                                                   ("phone", "+44 20 7946 0958")]),
    ("us (212) 555-0199 / 212-555-0199 / 212.555.0199", [("phone", "(212) 555-0199"),
        ("phone", "212-555-0199"), ("phone", "212.555.0199")]),
    ("uk 020 7946 0958", [("phone", "020 7946 0958")]),
    ("too short +12 345", []),
    ("hosts 10.0.0.1:8080 and 255.255.255.255", [("ipv4", "10.0.0.1"), ("ipv4", "255.255.255.255")]),
    ("not ips 256.1.1.1 1.2.3.4.5 v1.2.3", []),
    ("v6 2001:db8::8a2e:370:7334 and ::1 and fe80::1", [("ipv6", "2001:db8::8a2e:370:7334"),
                                                       ("ipv6", "::1"), ("ipv6", "fe80::1")]),
    ("mapped ::ffff:192.0.2.1 ok", [("ipv6", "::ffff:192.0.2.1")]),
    ("full 2001:0db8:0000:0000:0000:ff00:0042:8329", [("ipv6", "2001:0db8:0000:0000:0000:ff00:0042:8329")]),
    ("not v6: 10:30:00, 1::2::3, std::vector", []),  # a time, two '::', a C++ name
    ("ssn 123-45-6789", [("ssn", "123-45-6789")]),
    ("bad ssns 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000", []),
    ("mac 00:1A:2B:3C:4D:5E and 00-1a-2b-3c-4d-5e and 001a.2b3c.4d5e", [("mac", "00:1A:2B:3C:4D:5E"),
        ("mac", "00-1a-2b-3c-4d-5e"), ("mac", "001a.2b3c.4d5e")]),
    (f"key={AWS} and ASIAY34FZKBOKMUTVV7A", [("aws_key", AWS), ("aws_key", "ASIAY34FZKBOKMUTVV7A")]),
    ("AKIA short AKIAIOSFODNN7EXAMPL", []),
    (f"token {GHP}", [("github_token", GHP)]),
    ("pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", [
        ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz")]),
    ("slack xoxb-1234567890-abcdefghij", [("slack_token", "xoxb-1234567890-abcdefghij")]),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc; test sk_test_4eC39HqLyjWDarjtT1zdp7dc", [
        ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc")]),
    (f"jwt {JWT}", [("jwt", JWT)]),
    (f"Authorization: Bearer {JWT}", [("bearer_token", JWT)]),  # the bearer rule wins
    ("bearer abc", []),  # too short for a token
    ("db postgres://app:hunter2@db.internal:5432/x", [("url_credentials", "app:hunter2")]),
    ("no password https://app@db.example.com/x", [("email", "app@db.example.com")]),
    ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\nrest",
     [("private_key", "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----")]),
    ("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----", []),
    ("cut -----BEGIN PRIVATE KEY-----\nMIIE", [("private_key", "-----BEGIN PRIVATE KEY-----\nMIIE")]),
    ("naïve café 4111111111111111 €", [("card", "4111111111111111")]),  # multi-byte neighbours
    ("", []),
    # --- more traps and real-world shapes
    ("isbn 978-3-16-148410-0, coords 52.5200,13.4050, date 2024-01-15 12:34:56.789", []),
    ("sha 3f786850e387550fdab836ed7e6dc881de23001b price 4111.11 eur 10.0.0.256", []),
    ("tel:+14155552671 or +1-212-555-0199.", [("phone", "+14155552671"), ("phone", "+1-212-555-0199")]),
    ("toll free 1-800-555-0199", [("phone", "1-800-555-0199")]),
    ("zone fe80::1%eth0 slaac fe80::a00:27ff:fe4e:66a1", [("ipv6", "fe80::1"),
                                                         ("ipv6", "fe80::a00:27ff:fe4e:66a1")]),
    ('{"card":"4012888888881881","mc":"5555555555554444"}', [("card", "4012888888881881"),
                                                              ("card", "5555555555554444")]),
    ("John.Doe@Example.COM cc user@sub.domain.example.co.uk", [("email", "John.Doe@Example.COM"),
        ("email", "user@sub.domain.example.co.uk")]),
    ("bad domains a@b-.com a@-b.com", []),
    ("Bearer\tabcdefghijklmnopqrstu", [("bearer_token", "abcdefghijklmnopqrstu")]),
    ("unsigned eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", [("jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.")]),
    ("ftp://user:p%40ss@host and https://user:@host", [("url_credentials", "user:p%40ss")]),
    ("short ones: github_pat_11ABC_short xoxb-123", []),
    ("known limits: de89370400440532013000, ssn 123 45 6789", []),  # lower-case IBAN, SSN with spaces
]  # fmt: skip


@pytest.mark.parametrize(("text", "want"), CASES, ids=[c[0][:40] for c in CASES])
def test_hand_cases_give_exact_spans(text: str, want: list[tuple[str, str]]) -> None:
    vals = pa.array([text])
    s = detect(vals)
    got = list(zip([TYPES[t] for t in s.type], span_texts(vals, s).to_pylist(), strict=True))
    assert got == want
    raw = text.encode()
    for k in range(len(s)):  # spans are byte offsets into the value
        assert raw[s.start[k] : s.end[k]].decode() == got[k][1]


def test_records_nulls_and_bad_utf8_do_not_crash_or_shift() -> None:
    vals = pa.array([b"a@b.com", None, b"\xff\xfe 4111111111111111 \xc3", b"", b"x 10.1.2.3"],
                    pa.binary())  # fmt: skip
    s = detect(vals)
    assert s.record.tolist() == [0, 2, 4]
    assert [TYPES[t] for t in s.type] == ["email", "card", "ipv4"]
    out = splice(vals, s, [b"<" + t.upper().encode() + b">" for t in TYPES])
    assert out.to_pylist() == [b"<EMAIL>", None, b"\xff\xfe <CARD> \xc3", b"", b"x <IPV4>"]


def test_types_filter_and_secret_group() -> None:
    vals = pa.array([f"a@b.com {AWS} 10.0.0.1"])
    assert [TYPES[t] for t in detect(vals, ["ipv4"]).type] == ["ipv4"]
    assert [TYPES[t] for t in detect(vals, ["secret"]).type] == ["aws_key"]
    with pytest.raises(ValueError, match="unknown detector type"):
        type_codes(["nope"])


def _luhn(d: str) -> bool:
    s = 0
    for i, c in enumerate(reversed(d)):
        x = int(c) * (2 if i % 2 else 1)
        s += x - 9 if x > 9 else x
    return s % 10 == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(13, 19), st.randoms(use_true_random=False))
def test_card_matches_stdlib_luhn_on_random_numbers(n: int, rnd: random.Random) -> None:
    num = "4" + "".join(rnd.choice("0123456789") for _ in range(n - 1))
    s = detect(pa.array([f"x {num} y"]))
    assert (len(s) == 1 and TYPES[s.type[0]] == "card") == _luhn(num)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(IBAN_LENGTHS)), st.randoms(use_true_random=False))
def test_iban_matches_mod97_on_random_ibans(cc: str, rnd: random.Random) -> None:
    body = "".join(
        rnd.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(IBAN_LENGTHS[cc] - 4)
    )
    check = f"{rnd.randrange(100):02d}"
    iban = cc + check + body
    moved = iban[4:] + iban[:4]
    ok = int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    s = detect(pa.array([f"to {iban} ."]), ["iban"])
    assert (len(s) == 1) == ok


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=4, max_size=4))
def test_ipv4_matches_ipaddress(octets: list[int]) -> None:
    text = ".".join(map(str, octets))
    try:
        ipaddress.IPv4Address(text)
        ok = True
    except ValueError:
        ok = False
    s = detect(pa.array([f"ip {text} x"]), ["ipv4"])
    assert (len(s) == 1 and span_texts(pa.array([f"ip {text} x"]), s)[0].as_py() == text) == ok


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**128 - 1), st.booleans())
def test_ipv6_finds_compressed_and_exploded_forms(x: int, exploded: bool) -> None:
    a = ipaddress.IPv6Address(x)
    text = a.exploded if exploded else a.compressed
    if text == "::":
        return  # the unspecified address alone is not reported
    vals = pa.array([f"addr {text} x"])
    s = detect(vals, ["ipv6"])
    assert span_texts(vals, s).to_pylist() == [text]


_WORDS = ["a@b.io", "4111111111111111", "x", "10.0.0.1", "é", " ", "::1", "AKIAIOSFODNN7EXAMPLE"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_WORDS), max_size=8), max_size=6))
def test_splice_matches_python_splice(rows: list[list[str]]) -> None:
    vals = pa.array([" ".join(r) for r in rows], pa.string())
    s = detect(vals)
    reps = [f"<{t}>".encode() for t in TYPES]
    got = splice(vals, s, reps).to_pylist()
    want = []
    for i, v in enumerate(vals.to_pylist()):
        raw = v.encode()
        out, p = b"", 0
        for k in np.flatnonzero(s.record == i):
            out += raw[p : s.start[k]] + reps[s.type[k]]
            p = s.end[k]
        want.append((out + raw[p:]).decode())
    assert got == want
    # spans never overlap and are sorted
    for k in range(1, len(s)):
        assert (s.record[k], s.start[k]) >= (s.record[k - 1], s.end[k - 1])


def test_user_patterns_with_validator_merge_without_overlap() -> None:
    vals = pa.array(["emp E-12345 and E-99999 card 4111111111111111", None, "E-1"])
    pats = [
        Pattern("employee_id", r"E-\d{5}"),
        Pattern("luhn_number", r"\d{16}", validator="luhn"),  # overlaps the built-in card
    ]
    s = detect(vals, patterns=pats)
    assert [s.names[t] for t in s.type] == ["employee_id", "employee_id", "card"]
    assert span_texts(vals, s).to_pylist() == ["E-12345", "E-99999", "4111111111111111"]
    with pytest.raises(ValueError, match="unknown validator"):
        detect(vals, patterns=[Pattern("x", r"\d", validator="nope")])


def test_user_pattern_positions_match_python_re() -> None:
    vals = pa.array(["ab12 cd345 é67", "none", "9"])
    s = detect(vals, [], [Pattern("num", r"[0-9]+")])
    want = [(i, m.start(), m.end()) for i, v in enumerate(vals.to_pylist())
            for m in re.finditer(rb"[0-9]+", v.encode())]  # fmt: skip
    assert list(zip(s.record.tolist(), s.start.tolist(), s.end.tolist(), strict=True)) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=80),
                          st.text(alphabet="0123456789abcdefABCDEF:.-@ +()/_eyJxoAKI", max_size=80)
                          .map(str.encode)), max_size=8))  # fmt: skip
def test_any_bytes_give_in_bounds_sorted_spans_and_keep_every_record(
    rows: list[bytes | None],
) -> None:
    vals = pa.array(rows, pa.binary())
    s = detect(vals)
    for k in range(len(s)):
        n = len(rows[s.record[k]])
        assert 0 <= s.start[k] < s.end[k] <= n
        if k:
            assert (s.record[k], s.start[k]) >= (s.record[k - 1], s.end[k - 1])
    out = splice(vals, s, [b"<X>"] * len(TYPES))
    assert len(out) == len(rows)
    assert [v is None for v in out.to_pylist()] == [v is None for v in rows]


def test_context_words_raise_confidence_and_min_confidence_filters():
    vals = pa.array(["call 212-555-0199 or 212-555-0198", "ref 212-555-0197", "SSN: 123-45-6789"])
    s = detect(vals)
    assert [round(float(x), 2) for x in s.confidence] == [0.75, 0.75, 0.6, 1.0]
    kept = detect(vals, min_confidence=0.7)
    assert span_texts(vals, kept).to_pylist() == ["212-555-0199", "212-555-0198", "123-45-6789"]
