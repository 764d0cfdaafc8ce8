"""A labelled corpus for detection: free-text lines with embedded PII and secrets, and the exact
byte span and type of each, plus hand-written hard cases; precision and recall per type, for
raymask's detector and for Presidio's pattern recognizers (run without NER) as a peer.

Every generated value is valid for its type (Luhn-valid cards with real issuer prefixes, IBANs
with correct check digits and registry lengths, SSNs in the issued ranges, ...). The filler
around them is chosen to tempt a detector: order ids and epoch timestamps, Luhn-failing
16-digit numbers, version strings, UUIDs, hex digests, times, amounts, non-ASCII words.

    python -m raymask.loadtest.detect_corpus --records 20000 [--presidio]
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import random
import string
from collections import Counter
from dataclasses import dataclass, field

from raymask.kernels._validators import IBAN_LENGTHS

__all__ = ["Line", "generate", "hard_cases", "score", "presidio_spans", "PRESIDIO_TYPES"]


@dataclass
class Line:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # byte start, end, type


def _luhn_digit(partial: str) -> str:
    s = 0
    for i, c in enumerate(reversed(partial)):
        x = int(c) * (2 if i % 2 == 0 else 1)
        s += x - 9 if x > 9 else x
    return str((10 - s % 10) % 10)


def _card(r: random.Random) -> str:
    prefix, n = r.choice([("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16),
                          ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 16),
                          ("35", 16), ("36", 14)])  # fmt: skip
    body = prefix + "".join(r.choice(string.digits) for _ in range(n - len(prefix) - 1))
    num = body + _luhn_digit(body)
    style = r.random()
    if style < 0.4 or n not in (16, 15):
        return num
    sep = " " if style < 0.7 else "-"
    groups = [4, 6, 5] if n == 15 else [4, 4, 4, 4]
    out, p = [], 0
    for g in groups:
        out.append(num[p : p + g])
        p += g
    return sep.join(out)


def _iban(r: random.Random) -> str:
    cc = r.choice(sorted(IBAN_LENGTHS))
    n = IBAN_LENGTHS[cc] - 4
    if cc in ("GB", "NL", "IE"):
        bban = "".join(r.choice(string.ascii_uppercase) for _ in range(4))
        bban += "".join(r.choice(string.digits) for _ in range(n - 4))
    else:
        bban = "".join(r.choice(string.digits) for _ in range(n))
    moved = bban + cc + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    iban = f"{cc}{check:02d}{bban}"
    if r.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _phone(r: random.Random) -> str:
    d = lambda k: "".join(r.choice(string.digits) for _ in range(k))  # noqa: E731
    nxx = lambda: r.choice("23456789") + d(2)  # noqa: E731
    return r.choice([
        lambda: f"+1 ({nxx()}) {nxx()}-{d(4)}",
        lambda: f"+1 {nxx()} {nxx()} {d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"+49 30 {d(7)}",
        lambda: f"+33 {r.choice('1234567')} {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+{r.choice('123456789')}{d(10)}",
        lambda: f"({nxx()}) {nxx()}-{d(4)}",
        lambda: f"{nxx()}-{nxx()}-{d(4)}",
        lambda: f"{nxx()}.{nxx()}.{d(4)}",
        lambda: f"020 {d(4)} {d(4)}",
    ])()  # fmt: skip


def _ssn(r: random.Random) -> str:
    area = r.choice([x for x in range(1, 900) if x != 666])
    return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"


def _b64url(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.ascii_letters + string.digits + "-_") for _ in range(n))


def _alnum(r: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def _jwt(r: random.Random) -> str:
    enc = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()  # noqa: E731
    head = enc({"alg": "HS256", "typ": "JWT"})
    body = enc({"sub": str(r.randint(1, 10**9)), "iat": r.randint(1_600_000_000, 1_800_000_000)})
    return f"{head}.{body}.{_b64url(r, 43)}"


def _pem(r: random.Random) -> str:
    kind = r.choice(["RSA ", "EC ", "", "OPENSSH "])
    body = "\n".join(_alnum(r, 64, string.ascii_letters + string.digits + "+/") for _ in range(2))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


_DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "ex-ample.co.uk", "x.io"]
_NAMES = ["ann", "bob.smith", "c.d_e", "dora+tag", "eve-lyn", "f42", "gil.o.r"]


def _value(r: random.Random, t: str) -> str:
    if t == "email":
        return f"{r.choice(_NAMES)}{r.randint(0, 99)}@{r.choice(_DOMAINS)}"
    if t == "card":
        return _card(r)
    if t == "iban":
        return _iban(r)
    if t == "phone":
        return _phone(r)
    if t == "ipv4":
        return ".".join(str(r.randint(0, 255)) for _ in range(4))
    if t == "ipv6":
        a = ipaddress.IPv6Address(r.getrandbits(128) if r.random() < 0.5 else
                                  (0x20010DB8 << 96) | r.getrandbits(16))  # fmt: skip
        return a.exploded if r.random() < 0.3 else a.compressed
    if t == "ssn":
        return _ssn(r)
    if t == "mac":
        sep = r.choice(":-")
        return sep.join(f"{r.randrange(256):02x}" for _ in range(6)).upper() if r.random() < 0.5 \
            else sep.join(f"{r.randrange(256):02x}" for _ in range(6))  # fmt: skip
    if t == "aws_key":
        return r.choice(["AKIA", "ASIA"]) + _alnum(r, 16, string.ascii_uppercase + "234567")
    if t == "github_token":
        return r.choice(["ghp_", "gho_", "ghs_"]) + _alnum(r, 36)
    if t == "slack_token":
        return f"xox{r.choice('bpas')}-{r.randint(10**9, 10**12)}-{_alnum(r, 24)}"
    if t == "stripe_key":
        return r.choice(["sk_live_", "rk_live_"]) + _alnum(r, 24)
    if t == "jwt":
        return _jwt(r)
    if t == "bearer_token":
        return _alnum(r, 40, string.ascii_letters + string.digits + "._-")
    if t == "private_key":
        return _pem(r)
    if t == "url_credentials":
        return f"{_alnum(r, 6, string.ascii_lowercase)}:{_alnum(r, 12)}"
    raise ValueError(t)


# sentence shapes: {v} is the value; the prefix/suffix give it the context it has in real logs
_SHAPES = {
    "email": ["contact {v} for access", "mail from <{v}>", "user={v};", "https://ex.com/u?to={v}&x=1"],
    "card": ["card {v} declined", "pan:{v}", "paid with {v}."],
    "iban": ["transfer to {v} ok", "IBAN: {v}"],
    "phone": ["call {v} today", "tel:{v}", "phone={v},"],
    "ipv4": ["from {v} port 443", "ip={v}", "[{v}]:8080"],
    "ipv6": ["from {v} port 443", "addr={v},", "[{v}]:8080"],
    "ssn": ["ssn {v} on file", "SSN: {v}"],
    "mac": ["device {v} joined", "mac={v}"],
    "aws_key": ["aws_access_key_id={v}", "key {v} rotated"],
    "github_token": ["token {v} leaked", "GITHUB_TOKEN={v}"],
    "slack_token": ["slack {v} posted", "SLACK_BOT_TOKEN={v}"],
    "stripe_key": ["stripe key {v}", "STRIPE_SECRET={v}"],
    "jwt": ["session {v} expired", "id_token={v}&state=1"],
    "bearer_token": ["Authorization: Bearer {v}", "header bearer {v} sent"],
    "private_key": ["key:\n{v}\nend", "{v}"],
    "url_credentials": ["db postgres://{v}@db.internal:5432/app", "fetch https://{v}@repo.example.com/x"],
}  # fmt: skip


def _distractor(r: random.Random) -> str:
    d = lambda k: "".join(r.choice(string.digits) for _ in range(k))  # noqa: E731
    bad_card = "4" + d(14)
    bad_card += str((int(_luhn_digit(bad_card)) + r.randint(1, 9)) % 10)  # fails Luhn
    return r.choice([
        f"order {d(8)}", f"ts={r.randint(1_600_000_000_000, 1_800_000_000_000)}", f"ref {bad_card}", f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}",
        f"id {ipaddress.IPv6Address(r.getrandbits(128)).exploded.replace(':', '')[:32]}",
        "at 2024-05-01T12:30:00Z", f"took {r.randint(1, 999)}ms", f"amount ${r.randint(1, 9999)}.{d(2)}",
        f"trace {r.getrandbits(160):040x}", "naïve café résumé", "status=ok", "retry 3/5",
        f"uuid {r.getrandbits(32):08x}-{r.getrandbits(16):04x}-4{r.getrandbits(12):03x}-a{r.getrandbits(12):03x}-{r.getrandbits(48):012x}",
        f"time 10:{r.randint(10, 59)}:{r.randint(10, 59)}", f"build 1.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
        f"zip {d(5)}", f"qty {d(3)} x {d(4)}",
    ])  # fmt: skip


TYPE_WEIGHTS = {
    "email": 3, "card": 3, "iban": 2, "phone": 3, "ipv4": 3, "ipv6": 2, "ssn": 2, "mac": 2,
    "aws_key": 1, "github_token": 1, "slack_token": 1, "stripe_key": 1, "jwt": 1,
    "bearer_token": 1, "private_key": 1, "url_credentials": 1,
}  # fmt: skip


def generate(n: int, seed: int = 0, pii_per_line: tuple[int, int] = (0, 2)) -> list[Line]:
    """`n` lines of about 120 bytes: distractors with 0-2 embedded values, spans recorded."""
    r = random.Random(seed)
    types = list(TYPE_WEIGHTS)
    weights = [TYPE_WEIGHTS[t] for t in types]
    out = []
    for _ in range(n):
        groups: list[list[tuple[str, str | None]]] = []  # a shape with its value stays whole
        for t in r.choices(types, weights, k=r.randint(*pii_per_line)):
            pre, post = r.choice(_SHAPES[t]).split("{v}")
            groups.append([(pre, None), (_value(r, t), t), (post, None)])
        while sum(len(x) for g in groups for x, _ in g) < 100:
            groups.insert(r.randint(0, len(groups)), [(_distractor(r), None)])
        line = Line("")
        buf = b""
        for g in groups:
            if buf:
                buf += b" "
            for text, t in g:
                if t is not None:
                    line.spans.append((len(buf), len(buf) + len(text.encode()), t))
                buf += text.encode()
        line.text = buf.decode()
        out.append(line)
    return out


def hard_cases() -> list[Line]:
    """Hand-written traps: each line with its true spans (byte offsets)."""
    cases = [
        ("ref 4111 1111 1111 1112 is not a card", []),  # fails Luhn
        ("id 4111111111111111 ok", [("4111111111111111", "card")]),
        ("epoch 1700000000000 and 1234567890123456", []),  # no card issuer starts with 1
        ("see https://example.com/contact?to=ann@ex.io now", [("ann@ex.io", "email")]),
        ("mailto:bob@example.org", [("bob@example.org", "email")]),
        ("postgres://app:hunter2@db.internal/x", [("app:hunter2", "url_credentials")]),
        ("loopback ::1 and fe80::1 and 2001:db8::", [("::1", "ipv6"), ("fe80::1", "ipv6"), ("2001:db8::", "ipv6")]),
        ("mapped ::ffff:192.0.2.128 here", [("::ffff:192.0.2.128", "ipv6")]),
        ("time 10:30:45 and std::vector", []),
        ("not ip 1.2.3.4.5 nor 300.1.1.1", []),
        ("version 10.0.0.1-rc2", []),
        ("ssn 078-05-1120 but not 000-12-3456 or 666-01-0001", [("078-05-1120", "ssn")]),
        ("iban DE89 3704 0044 0532 0130 00.", [("DE89 3704 0044 0532 0130 00", "iban")]),
        ("iban DE89 3704 0044 0532 0130 01 fails mod-97", []),
        ("amex 3782 822463 10005 ok", [("3782 822463 10005", "card")]),
        ("GB82WEST12345698765432 GB82WEST12345698765433", [("GB82WEST12345698765432", "iban")]),
        ("AKIAIOSFODNN7EXAMPLE right, AKIAIOSFODNN7EXAMPLE1 too long", [("AKIAIOSFODNN7EXAMPLE", "aws_key")]),
        ("sk_test_4eC39HqLyjWDarjtT1zdp7dc is a test key", []),
        ("uuid 550e8400-e29b-41d4-a716-446655440000", []),
        ("mac 00:1a:2b:3c:4d:5e:6f is eight bytes? no, seven", []),
        ("café naïve bob@ex.io €", [("bob@ex.io", "email")]),
    ]  # fmt: skip
    out = []
    for text, want in cases:
        spans = []
        raw = text.encode()
        pos = 0
        for v, t in want:
            s = raw.index(v.encode(), pos)
            spans.append((s, s + len(v.encode()), t))
            pos = s + len(v.encode())
        out.append(Line(text, spans))
    return out


def score(
    lines: list[Line], found: list[list[tuple[int, int, str]]]
) -> dict[str, tuple[int, int, int]]:
    """(true positives, false positives, false negatives) per type; a found span counts only
    when its start, end and type are exactly the labelled ones."""
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for line, got in zip(lines, found, strict=True):
        want = set(line.spans)
        have = set(got)
        for s in have & want:
            tp[s[2]] += 1
        for s in have - want:
            fp[s[2]] += 1
        for s in want - have:
            fn[s[2]] += 1
    types = set(tp) | set(fp) | set(fn)
    return {t: (tp[t], fp[t], fn[t]) for t in sorted(types)}


def precision_recall(c: tuple[int, int, int]) -> tuple[float, float]:
    tp, fp, fn = c
    return (tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0)


def raymask_spans(lines: list[Line]) -> list[list[tuple[int, int, str]]]:
    import pyarrow as pa

    from raymask.kernels.detect import detect

    s = detect(pa.array([x.text for x in lines]))
    out: list[list[tuple[int, int, str]]] = [[] for _ in lines]
    for r, a, b, t in zip(s.record.tolist(), s.start.tolist(), s.end.tolist(), s.type.tolist(),
                          strict=True):  # fmt: skip
        out[r].append((a, b, s.names[t]))
    return out


# Presidio entity -> our type (IP_ADDRESS split by the text's shape)
PRESIDIO_TYPES = {
    "EMAIL_ADDRESS": "email", "CREDIT_CARD": "card", "IBAN_CODE": "iban", "PHONE_NUMBER": "phone",
    "IP_ADDRESS": "ip", "US_SSN": "ssn", "MAC_ADDRESS": "mac",
}  # fmt: skip


def presidio_analyzer():  # noqa: ANN201
    """Presidio's AnalyzerEngine with pattern recognizers only and a blank NLP engine.

    Presidio's default NLP engine loads a spaCy model that is not on PyPI. Its pattern
    recognizers need no model: they need tokens only for context words. So the engine here
    tokenizes with `spacy.blank("en")` (a tokenizer, no NER, nothing to download) and returns no
    entities; the registry holds the pattern recognizers of the types we compare (the phone
    recognizer uses the `phonenumbers` library, no model either)."""
    import spacy
    import tldextract.tldextract as tld
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        MacAddressRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    class BlankNlpEngine(NlpEngine):
        def __init__(self) -> None:
            self.nlp = spacy.blank("en")

        def load(self) -> None:
            pass

        def is_loaded(self) -> bool:
            return True

        def get_supported_entities(self) -> list[str]:
            return []

        def get_supported_languages(self) -> list[str]:
            return ["en"]

        def is_stopword(self, word: str, language: str) -> bool:
            return False

        def is_punct(self, word: str, language: str) -> bool:
            return False

        def process_text(self, text: str, language: str) -> NlpArtifacts:
            doc = self.nlp(text)
            return NlpArtifacts(entities=[], tokens=doc, tokens_indices=[t.idx for t in doc],
                                lemmas=[t.text.lower() for t in doc], nlp_engine=self,
                                language=language)  # fmt: skip

        def process_batch(self, texts, language, batch_size=1, n_process=1, **kw):  # noqa: ANN001, ANN201
            for t in texts:
                yield t, self.process_text(t, language)

    # offline: the email recognizer's tldextract would fetch the public suffix list; use the
    # snapshot shipped in its wheel instead
    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in (EmailRecognizer(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(),
                MacAddressRecognizer(), PhoneRecognizer(), UsSsnRecognizer()):  # fmt: skip
        registry.add_recognizer(rec)
    return AnalyzerEngine(
        registry=registry, nlp_engine=BlankNlpEngine(), supported_languages=["en"]
    )


def presidio_spans(lines: list[Line], analyzer=None) -> list[list[tuple[int, int, str]]]:  # noqa: ANN001
    """Presidio's spans (converted to byte offsets and our type names), overlaps resolved as
    its anonymizer would (higher score first)."""
    analyzer = analyzer or presidio_analyzer()
    out = []
    for line in lines:
        res = analyzer.analyze(line.text, language="en", entities=list(PRESIDIO_TYPES))
        res = sorted(res, key=lambda x: (-x.score, x.start))
        taken: list[tuple[int, int]] = []
        spans = []
        for x in res:
            if any(x.start < b and a < x.end for a, b in taken):
                continue
            taken.append((x.start, x.end))
            t = PRESIDIO_TYPES[x.entity_type]
            if t == "ip":
                t = "ipv6" if ":" in line.text[x.start : x.end] else "ipv4"
            a = len(line.text[: x.start].encode())
            b = a + len(line.text[x.start : x.end].encode())
            spans.append((a, b, t))
        out.append(spans)
    return out


def report(lines: list[Line], presidio: bool) -> str:
    ours = score(lines, raymask_spans(lines))
    peer = score(lines, presidio_spans(lines)) if presidio else {}
    rows = ["type              raymask P / R        presidio P / R"]
    for t in ours:
        p, r = precision_recall(ours[t])
        other = "n/a (no recognizer)"
        if t in peer and t in set(PRESIDIO_TYPES.values()) | {"ipv4", "ipv6"}:
            pp, pr = precision_recall(peer[t])
            other = f"{pp:.4f} / {pr:.4f}"
        rows.append(f"{t:16s}  {p:.4f} / {r:.4f}     {other}   (n={sum(ours[t][::2])})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--presidio", action="store_true", help="also run Presidio as a peer")
    a = ap.parse_args(argv)
    print(report(generate(a.records, a.seed) + hard_cases(), a.presidio))


if __name__ == "__main__":
    main()
