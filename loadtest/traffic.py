"""Synthetic machine-to-machine traffic with PII, generated column-wise (NumPy + Arrow compute).

Profiles:
- ``payments``: card payment events (account, customer name/email/phone, Luhn-valid card,
  mod-97-valid IBAN, amount, merchant, client IP, a free-text note with embedded PII);
- ``iot``: device telemetry (device id, owner email/phone, GPS, temperature, IPv4/IPv6, MAC,
  firmware, a status message with embedded PII);
- ``logs``: service log lines (user id/email, client IP, request path, level, a message with
  embedded PII and secret-looking tokens).

Keys are skewed (Zipf, s = 1.1: a few hot devices/accounts) and every record carries `seq`, its
number within its key, so per-key order can be checked after masking. Same seed, same bytes.
No Python call per record: a million records take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "PROFILES",
    "FORMATS",
    "XML_RECORDS",
    "PROTO_MESSAGES",
    "TRAFFIC_PROTO",
    "generate",
    "generate_bytes",
    "luhn_valid",
    "iban_valid",
]

PROFILES = ("payments", "iot", "logs")

_FIRST = [
    ("José", "jose"), ("Zoë", "zoe"), ("Łukasz", "lukasz"), ("Søren", "soren"), ("Amélie", "amelie"),
    ("Mia", "mia"), ("Noah", "noah"), ("Aarav", "aarav"), ("Yuki", "yuki"), ("Fatima", "fatima"),
    ("Oliver", "oliver"), ("Chloé", "chloe"), ("Mateo", "mateo"), ("Ingrid", "ingrid"), ("Kwame", "kwame"),
    ("Priya", "priya"), ("Björn", "bjorn"), ("Elena", "elena"), ("Liam", "liam"), ("Sofía", "sofia"),
]  # fmt: skip
_LAST = [
    ("Müller", "mueller"), ("García", "garcia"), ("Smith", "smith"), ("Nowak", "nowak"), ("Rossi", "rossi"),
    ("Dubois", "dubois"), ("Tanaka", "tanaka"), ("Okafor", "okafor"), ("Hansen", "hansen"), ("Kim", "kim"),
    ("Silva", "silva"), ("Novák", "novak"), ("O'Neil", "oneil"), ("Jensen", "jensen"), ("Patel", "patel"),
]  # fmt: skip
_DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "iot.example.io", "bank.example"]
_MERCHANTS = [
    "Café Lumière",
    "Fresh Market",
    "Metro Transit",
    "Book Nook",
    "Fuel & Go",
    "Pixel Store",
]
_CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK"]
_SERVICES = ["auth", "billing", "gateway", "telemetry", "search"]
_LEVELS = ["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"]
_PATHS = ["/v1/login", "/v1/payments", "/v1/devices/status", "/v1/search", "/healthz"]
_FIRMWARE = ["1.4.2", "1.4.3", "2.0.0-rc1", "2.0.1"]
_ALNUM = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", np.uint8)
_ALNUM_LOWER = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def _strings(mat: np.ndarray) -> pa.Array:
    """(n, w) uint8 ASCII matrix -> string array of width w."""
    n, w = mat.shape
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * w)
    return pa.Array.from_buffers(
        pa.string(), n, [None, offsets, pa.py_buffer(np.ascontiguousarray(mat))]
    )


def _digits(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.integers(0, 10, size=(n, k), dtype=np.uint8)


def _num(d: np.ndarray) -> pa.Array:
    return _strings(d + 48)


def _pick(
    rng: np.random.Generator, n: int, choices: list[str], p: np.ndarray | None = None
) -> pa.Array:
    idx = rng.choice(len(choices), size=n, p=p)
    return pa.array(choices).take(pa.array(idx))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _luhn_check(d: np.ndarray) -> np.ndarray:
    """Check digit for payload digits d (n, k) so that payload + check is Luhn-valid."""
    k = d.shape[1]
    dbl = (k - 1 - np.arange(k)) % 2 == 0  # rightmost payload digit is doubled
    x = d.astype(np.int64)
    x[:, dbl] *= 2
    x[x > 9] -= 9
    return ((10 - x.sum(axis=1) % 10) % 10).astype(np.uint8)


def luhn_valid(number: str) -> bool:
    """Luhn check of the digits of `number` (separators ignored)."""
    ds = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, dgt in enumerate(reversed(ds)):
        if i % 2 == 1:
            dgt *= 2
            if dgt > 9:
                dgt -= 9
        total += dgt
    return len(ds) >= 12 and total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 mod-97 check."""
    s = iban.replace(" ", "")
    if len(s) < 15 or not s[:2].isalpha():
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _cards(rng: np.random.Generator, n: int) -> pa.Array:
    d = _digits(rng, n, 16)
    brand = rng.integers(0, 6, n)
    d[:, 0] = np.where(brand == 0, 4, 5)
    d[:, 1] = np.where(brand == 0, d[:, 1], brand)  # 51-55 for Mastercard
    d[:, 15] = _luhn_check(d[:, :15])
    plain = _num(d)
    spaced = _join(
        _num(d[:, 0:4]), " ", _num(d[:, 4:8]), " ", _num(d[:, 8:12]), " ", _num(d[:, 12:16])
    )
    return pc.if_else(pa.array(rng.random(n) < 0.5), spaced, plain)


def _ibans(rng: np.random.Generator, n: int) -> pa.Array:
    bban = _digits(rng, n, 18)
    # DE + check digits + BBAN; check = 98 - (BBAN + "1314" + "00") mod 97  (D=13, E=14)
    tail = np.array([1, 3, 1, 4, 0, 0], np.int64)
    r = np.zeros(n, np.int64)
    for j in range(18):
        r = (r * 10 + bban[:, j]) % 97
    for t in tail:
        r = (r * 10 + t) % 97
    check = 98 - r
    cd = np.stack([check // 10, check % 10], axis=1).astype(np.uint8)
    compact = _join("DE", _num(cd), _num(bban))
    spaced = _join(
        "DE", _num(cd), " ", _num(bban[:, 0:4]), " ", _num(bban[:, 4:8]), " ", _num(bban[:, 8:12]),
        " ", _num(bban[:, 12:16]), " ", _num(bban[:, 16:18]),
    )  # fmt: skip
    return pc.if_else(pa.array(rng.random(n) < 0.5), spaced, compact)


def _phones(rng: np.random.Generator, n: int) -> pa.Array:
    de = _join("+49 15", _num(_digits(rng, n, 1)), " ", _num(_digits(rng, n, 7)))
    us = _join(
        "+1 (",
        _num(_digits(rng, n, 3)),
        ") ",
        _num(_digits(rng, n, 3)),
        "-",
        _num(_digits(rng, n, 4)),
    )
    return pc.if_else(pa.array(rng.random(n) < 0.6), de, us)


def _octets(rng: np.random.Generator, n: int) -> pa.Array:
    return pc.cast(pa.array(rng.integers(1, 255, n)), pa.string())


def _expiry(rng: np.random.Generator, n: int) -> pa.Array:
    month = rng.integers(1, 13, n)
    mm = np.stack([month // 10, month % 10], axis=1).astype(np.uint8)
    yy = rng.integers(27, 32, n)
    return _join(_num(mm), "/", _num(np.stack([yy // 10, yy % 10], axis=1).astype(np.uint8)))


def _ipv4(rng: np.random.Generator, n: int) -> pa.Array:
    return _join(_octets(rng, n), ".", _octets(rng, n), ".", _octets(rng, n), ".", _octets(rng, n))


def _ipv6(rng: np.random.Generator, n: int) -> pa.Array:
    groups = [_strings(_HEX[rng.integers(0, 16, (n, 4))]) for _ in range(6)]
    parts: list[pa.Array | str] = ["2001:db8"]
    for g in groups:
        parts += [":", g]
    return _join(*parts)


def _mac(rng: np.random.Generator, n: int) -> pa.Array:
    h = _HEX[rng.integers(0, 16, (n, 12))]
    parts: list[pa.Array | str] = []
    for i in range(6):
        if i:
            parts.append(":")
        parts.append(_strings(h[:, 2 * i : 2 * i + 2]))
    return _join(*parts)


def _people(rng: np.random.Generator, n: int) -> tuple[pa.Array, pa.Array]:
    fi = rng.integers(0, len(_FIRST), n)
    li = rng.integers(0, len(_LAST), n)
    first = pa.array([f for f, _ in _FIRST]).take(pa.array(fi))
    last = pa.array([x for x, _ in _LAST]).take(pa.array(li))
    fa = pa.array([a for _, a in _FIRST]).take(pa.array(fi))
    la = pa.array([a for _, a in _LAST]).take(pa.array(li))
    num = pc.cast(pa.array(rng.integers(1, 100, n)), pa.string())
    email = _join(fa, ".", la, num, "@", _pick(rng, n, _DOMAINS))
    return _join(first, " ", last), email


def _keys(
    rng: np.random.Generator, n: int, cardinality: int, prefix: str, width: int
) -> tuple[pa.Array, np.ndarray]:
    ranks = np.arange(1, cardinality + 1, dtype=np.float64)
    p = ranks**-1.1
    p /= p.sum()
    perm = rng.permutation(cardinality)
    k = perm[rng.choice(cardinality, size=n, p=p)]
    digits = np.zeros((n, width), np.uint8)
    x = k.copy()
    for j in range(width - 1, -1, -1):
        digits[:, j] = x % 10
        x //= 10
    keys = _join(prefix, _num(digits))
    # seq: number of the record within its key, vectorized cumcount
    order = np.argsort(k, kind="stable")
    sk = k[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sk)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    seq = np.empty(n, np.int64)
    seq[order] = np.arange(n) - group_start
    return keys, seq


def _timestamps(rng: np.random.Generator, n: int) -> pa.Array:
    base = np.datetime64("2026-11-23T08:00:00", "ms").astype(np.int64)
    ts = base + np.cumsum(rng.integers(1, 40, n))
    return pc.strftime(pa.array(ts, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%SZ")


def _choose(rng: np.random.Generator, n: int, options: list[pa.Array]) -> pa.Array:
    idx = pa.array(rng.integers(0, len(options), n).astype(np.int8))
    return pc.choose(idx, *options)


def _secret(rng: np.random.Generator, n: int) -> pa.Array:
    aws = _join("AKIA", _strings(_ALNUM[rng.integers(0, 26, (n, 16))]))
    ghp = _join("ghp_", _strings(_ALNUM_LOWER[rng.integers(0, 36, (n, 36))]))
    return pc.if_else(pa.array(rng.random(n) < 0.5), aws, ghp)


@dataclass
class _Col:
    path: str
    values: pa.Array
    string: bool = True


def _payments(rng: np.random.Generator, n: int) -> list[_Col]:
    acct, seq = _keys(rng, n, max(10, n // 50), "acc-", 8)
    name, email = _people(rng, n)
    phone = _phones(rng, n)
    phone = pc.if_else(pa.array(rng.random(n) < 0.05), pa.scalar(None, pa.string()), phone)
    card = _cards(rng, n)
    iban = _ibans(rng, n)
    amount = pc.cast(pa.array(np.round(rng.lognormal(3.0, 1.0, n), 2)), pa.string())
    ip = _ipv4(rng, n)
    note = _choose(rng, n, [
        pa.array(["ok"] * n),
        _join("refund requested by ", email),
        _join("customer asked to call back on ", phone.fill_null("+49 151 0000000")),
        _join("card ", card, " flagged for review from ", ip),
        _join("wire to ", iban, " scheduled"),
    ])  # fmt: skip
    return [
        _Col("event_id", _join("evt-", _strings(_HEX[rng.integers(0, 16, (n, 16))]))),
        _Col("ts", _timestamps(rng, n)),
        _Col("seq", pc.cast(pa.array(seq), pa.string()), False),
        _Col("account.id", acct),
        _Col("account.iban", iban),
        _Col("customer.name", name),
        _Col("customer.email", email),
        _Col("customer.phone", phone),
        _Col("card.number", card),
        _Col("card.expiry", _expiry(rng, n)),
        _Col("amount", amount, False),
        _Col("currency", _pick(rng, n, _CURRENCIES)),
        _Col("merchant.name", _pick(rng, n, _MERCHANTS)),
        _Col("merchant.mcc", _num(_digits(rng, n, 4))),
        _Col("client_ip", ip),
        _Col("note", note),
    ]


def _iot(rng: np.random.Generator, n: int) -> list[_Col]:
    dev, seq = _keys(rng, n, max(10, n // 100), "dev-", 6)
    _, email = _people(rng, n)
    ip = _ipv4(rng, n)
    ip6 = _ipv6(rng, n)
    lat = np.round(rng.uniform(35.0, 60.0, n), 5)
    lon = np.round(rng.uniform(-10.0, 30.0, n), 5)
    temp = np.round(rng.normal(21.0, 4.0, n), 2)
    battery = rng.integers(0, 101, n)
    msg = _choose(rng, n, [
        pa.array(["heartbeat"] * n),
        _join("owner ", email, " paired from ", ip),
        _join("firmware fetched from ", ip6),
        pa.array(["battery low"] * n),
    ])  # fmt: skip
    return [
        _Col("device.id", dev),
        _Col("device.mac", _mac(rng, n)),
        _Col("device.firmware", _pick(rng, n, _FIRMWARE)),
        _Col("ts", _timestamps(rng, n)),
        _Col("seq", pc.cast(pa.array(seq), pa.string()), False),
        _Col("owner.email", email),
        _Col("owner.phone", _phones(rng, n)),
        _Col("gps.lat", pc.cast(pa.array(lat), pa.string()), False),
        _Col("gps.lon", pc.cast(pa.array(lon), pa.string()), False),
        _Col("temperature_c", pc.cast(pa.array(temp), pa.string()), False),
        _Col("battery_pct", pc.cast(pa.array(battery), pa.string()), False),
        _Col("net.ipv4", ip),
        _Col("net.ipv6", ip6),
        _Col("message", msg),
    ]


def _logs(rng: np.random.Generator, n: int) -> list[_Col]:
    user, seq = _keys(rng, n, max(10, n // 20), "usr-", 7)
    _, email = _people(rng, n)
    ip = _ipv4(rng, n)
    secret = _secret(rng, n)
    msg = _choose(rng, n, [
        pa.array(["request served"] * n),
        _join("login ok for ", email, " from ", ip),
        _join("payment declined for card ", _cards(rng, n)),
        _join("retrying with token ", secret),
        _join("password reset sent to ", email),
    ])  # fmt: skip
    return [
        _Col("ts", _timestamps(rng, n)),
        _Col("seq", pc.cast(pa.array(seq), pa.string()), False),
        _Col("service", _pick(rng, n, _SERVICES)),
        _Col("level", _pick(rng, n, _LEVELS)),
        _Col("user.id", user),
        _Col("user.email", email),
        _Col("client_ip", ip),
        _Col("request.path", _pick(rng, n, _PATHS)),
        _Col(
            "request.status",
            pc.cast(pa.array(rng.choice([200, 200, 200, 201, 401, 403, 500], n)), pa.string()),
            False,
        ),
        _Col("message", msg),
    ]


_BUILDERS = {"payments": _payments, "iot": _iot, "logs": _logs}


def generate(profile: str, n: int, seed: int = 0) -> list[_Col]:
    """Columns of `n` records of `profile` (deterministic in `seed`)."""
    if profile not in _BUILDERS:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    rng = np.random.default_rng(seed)
    return _BUILDERS[profile](rng, n)


def _ndjson(cols: list[_Col]) -> bytes:
    pieces: list[pa.Array | str] = []
    open_path: list[str] = []
    lit = "{"
    for i, c in enumerate(cols):
        segs = c.path.split(".")
        common = 0
        while common < min(len(open_path), len(segs) - 1) and open_path[common] == segs[common]:
            common += 1
        lit += "}" * (len(open_path) - common)
        open_path = open_path[:common]
        if i and not lit.endswith("{"):
            lit += ","
        for seg in segs[common:-1]:
            lit += f'"{seg}":{{'
            open_path.append(seg)
        lit += f'"{segs[-1]}":'
        text = pc.fill_null(_join('"', c.values, '"'), "null") if c.string else c.values
        pieces += [lit, text]
        lit = ""
    pieces.append("}" * len(open_path) + "}\n")
    line = _join(*pieces)
    bufs = line.buffers()
    offs = np.frombuffer(bufs[1], np.int32)[: len(line) + 1]
    return bytes(memoryview(bufs[2])[offs[0] : offs[-1]])


def _csv(cols: list[_Col]) -> bytes:
    import io

    import pyarrow.csv as pcsv

    table = pa.table(
        {c.path: c.values if c.string else pc.cast(c.values, pa.float64()) for c in cols}
    )
    # integers stay integers: cast back where the text has no decimal point
    for c in cols:
        if not c.string and not pc.any(pc.match_substring(c.values, ".")).as_py():
            table = table.set_column(
                table.schema.get_field_index(c.path), c.path, pc.cast(c.values, pa.int64())
            )
    sink = io.BytesIO()
    pcsv.write_csv(table, sink, write_options=pcsv.WriteOptions(quoting_style="needed"))
    return sink.getvalue()


# XML: root element and record element per profile (record path ROOT/RECORD); fields are nested
# elements by their dotted path, except the attributes named here (on the record element)
XML_RECORDS = {
    "payments": ("Payments", "Payment"),
    "iot": ("Telemetry", "Reading"),
    "logs": ("Log", "Entry"),
}
_XML_ATTRS = {"iot": {"device.id": "deviceId"}}
# Protobuf: the message of each profile in traffic.proto
TRAFFIC_PROTO = Path(__file__).with_name("traffic.proto")
PROTO_MESSAGES = {"payments": "raymask.traffic.Payment", "iot": "raymask.traffic.Reading", "logs": "raymask.traffic.LogEntry"}  # fmt: skip
FORMATS = ("ndjson", "csv", "xml", "protobuf")


def _xml_escape(values: pa.Array) -> pa.Array:
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        values = pc.replace_substring(values, a, b)
    return values


def _xml(cols: list[_Col], profile: str) -> bytes:
    root, rec = XML_RECORDS[profile]
    attrs = _XML_ATTRS.get(profile, {})
    if not len(cols[0].values):
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n</{root}>\n'.encode()
    head: list[pa.Array | str] = [f"  <{rec}"]
    for c in cols:
        if c.path in attrs:
            head += [f' {attrs[c.path]}="', pc.fill_null(_xml_escape(c.values), ""), '"']
    pieces: list[pa.Array | str] = [*head, ">"]
    open_path: list[str] = []
    for c in cols:
        if c.path in attrs:
            continue
        segs = c.path.split(".")
        common = 0
        while common < min(len(open_path), len(segs) - 1) and open_path[common] == segs[common]:
            common += 1
        pieces += [f"</{s}>" for s in reversed(open_path[common:])]
        open_path = open_path[:common]
        for seg in segs[common:-1]:
            pieces.append(f"<{seg}>")
            open_path.append(seg)
        leaf = segs[-1]
        text = _join(f"<{leaf}>", _xml_escape(c.values), f"</{leaf}>")
        pieces.append(pc.fill_null(text, f"<{leaf}/>"))
    pieces += [f"</{s}>" for s in reversed(open_path)] + [f"</{rec}>\n"]
    body = _join(*pieces)
    bufs = body.buffers()
    offs = np.frombuffer(bufs[1], np.int32)[: len(body) + 1]
    records = bytes(memoryview(bufs[2])[offs[0] : offs[-1]])
    return (
        (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n').encode()
        + records
        + f"</{root}>\n".encode()
    )


def _protobuf(cols: list[_Col], profile: str) -> bytes:
    from raymask.kernels.codecs.protobuf import compile_proto, frame, message_class

    cls = message_class(compile_proto(TRAFFIC_PROTO), PROTO_MESSAGES[profile])
    n = len(cols[0].values)
    rows: list[dict] = [{} for _ in range(n)]
    for c in cols:
        segs = c.path.split(".")
        fd = cls.DESCRIPTOR
        for seg in segs[:-1]:
            fd = fd.fields_by_name[seg].message_type
        ftype = fd.fields_by_name[segs[-1]].cpp_type
        vals = c.values
        if ftype in (1, 2, 3, 4):  # int32, int64, uint32, uint64
            vals = pc.cast(vals, pa.int64())
        elif ftype in (5, 6):  # double, float
            vals = pc.cast(vals, pa.float64())
        for row, v in zip(rows, vals.to_pylist(), strict=True):
            if v is None:
                continue
            d = row
            for seg in segs[:-1]:
                d = d.setdefault(seg, {})
            d[segs[-1]] = v
    return frame([cls(**r).SerializeToString() for r in rows])  # a generator, not the hot path


def generate_bytes(profile: str, n: int, seed: int = 0, fmt: str = "ndjson") -> bytes:
    """`n` records of `profile` as NDJSON, CSV, XML (one document, records at
    XML_RECORDS[profile]) or length-delimited Protobuf (PROTO_MESSAGES[profile] of
    traffic.proto) bytes; the same seed gives the same bytes."""
    cols = generate(profile, n, seed)
    if fmt == "ndjson":
        return _ndjson(cols)
    if fmt == "csv":
        return _csv(cols)
    if fmt == "xml":
        return _xml(cols, profile)
    if fmt == "protobuf":
        return _protobuf(cols, profile)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
