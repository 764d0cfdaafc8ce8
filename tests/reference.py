"""Plain-Python reference implementations of the techniques, used as oracles for the pipeline.

Deliberately simple and slow: one value at a time, stdlib only.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
import json
import re
from typing import Any

from raymask.policy.keys import Keyring

ABSENT = object()


def get_path(rec: dict, path: str, csv_mode: bool = False) -> Any:
    if csv_mode:
        return rec.get(path, ABSENT)
    cur: Any = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return ABSENT
        cur = cur[part]
    return cur


def drop_path(rec: dict, path: str, csv_mode: bool = False) -> None:
    if csv_mode:
        rec.pop(path, None)
        return
    parts = path.split(".")
    cur = rec
    for part in parts[:-1]:
        if not isinstance(cur, dict) or part not in cur:
            return
        cur = cur[part]
    if isinstance(cur, dict):
        cur.pop(parts[-1], None)


def _text(v: Any) -> str:
    # numbers are masked/tokenized as the text they were written with; json.loads loses that for
    # floats like 12.50, so the generator writes shortest-repr floats (repr round-trips)
    if isinstance(v, bool):
        raise TypeError
    return v if isinstance(v, str) else json.dumps(v)


def ref_mask(value: str, spec) -> str | None:
    """None when the preset refuses the value."""
    preset = spec.preset
    if preset == "card":
        if not re.fullmatch(r"[0-9 \-]*", value) or not 12 <= sum(c.isdigit() for c in value) <= 19:
            return None
        return _keep(value, lambda c: c.isascii() and c.isdigit(), 0, 4, spec.char)
    if preset == "phone":
        if (
            not re.fullmatch(r"\+?[0-9 \-.()]*", value)
            or not 4 <= sum(c.isdigit() for c in value) <= 20
        ):
            return None
        return _keep(value, lambda c: c.isascii() and c.isdigit(), 0, 2, spec.char)
    if preset == "iban":
        compact = value.replace(" ", "")
        if not re.fullmatch(r"[A-Za-z]{2}[A-Za-z0-9]{13,32}", compact) or not re.fullmatch(
            r"[A-Za-z0-9 ]*", value
        ):
            return None
        return _keep(value, lambda c: c.isascii() and c.isalnum(), 2, 4, spec.char)
    if preset == "email":
        at = value.rfind("@")
        if at <= 0 or at == len(value) - 1:
            return None
        return _keep(value[:at], lambda c: True, 1, 0, spec.char) + value[at:]
    pred = {
        "all": lambda c: True,
        "digits": lambda c: c.isascii() and c.isdigit(),
        "alnum": lambda c: c.isascii() and c.isalnum(),
    }[spec.mode]
    return _keep(value, pred, spec.keep_first, spec.keep_last, spec.char)


def _keep(value: str, maskable, first: int, last: int, char: str) -> str:
    m = sum(1 for c in value if maskable(c))
    if m <= first + last:
        first = last = 0
    out, i = [], 0
    for c in value:
        if maskable(c):
            out.append(c if (i < first or i >= m - last) else char)
            i += 1
        else:
            out.append(c)
    return "".join(out)


def ref_token(value: str, spec, ring: Keyring) -> str:
    key = ring.resolve(spec.key)
    d = hmac.new(key.material, value.encode(), "sha256").digest()
    if spec.encoding == "hex":
        enc = d.hex()
    elif spec.encoding == "base32":
        enc = base64.b32encode(d).decode().rstrip("=").lower()
    else:
        enc = base64.urlsafe_b64encode(d).decode().rstrip("=")
    if spec.length:
        enc = enc[: spec.length]
    return spec.prefix + (f"v{key.version}_" if spec.version_tag else "") + enc


def ref_fpe(value: str, spec, ring: Keyring) -> str | None:
    """FF1 through libffx, one value at a time, with keep_last; with Luhn, the last encrypted
    numeral is not enciphered but set to the digit that makes the number pass Luhn."""
    import ffx

    from raymask.kernels.fpe import ALPHABETS
    from raymask.loadtest.traffic import luhn_valid

    alph = ALPHABETS[spec.radix]
    key = ring.resolve(spec.key).material
    nums = [c for c in value if c in alph]
    head, tail = nums[: len(nums) - spec.keep_last], "".join(nums[len(nums) - spec.keep_last :])
    if spec.luhn:
        if not luhn_valid("".join(head) + tail):
            return None
        head = head[:-1]
    if spec.radix ** len(head) < 1_000_000:
        return None
    cipher = ffx.FF1(key, alphabet=alph)
    h = cipher.encrypt("".join(head), tweak=(spec.tweak or "").encode())
    if spec.luhn:
        (d,) = [d for d in "0123456789" if luhn_valid(h + d + tail)]
        h += d
    it = iter(h + tail)
    return "".join(next(it) if c in alph else c for c in value)


def ref_encrypt(value: str, spec, ring: Keyring, path: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    key = ring.resolve(spec.key)
    ct = AESSIV(key.material).encrypt(value.encode(), [path.encode()] if spec.bind_field else None)
    return f"{spec.prefix}v{key.version}." + base64.urlsafe_b64encode(ct).decode().rstrip("=")


def ref_generalize(value: Any, spec) -> Any:
    import datetime as _dt  # noqa: F401
    import ipaddress
    from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

    if spec.method == "ip_prefix":
        ip = ipaddress.ip_address(value)
        bits = spec.v4_bits if ip.version == 4 else spec.v6_bits
        return ipaddress.ip_network(f"{ip}/{bits}", strict=False).network_address.compressed
    if spec.method == "truncate_time":
        assert spec.unit == "hour"
        m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}):(\d{2})(:\d{2})?(\.\d+)?(.*)", value)
        sec = ":00" if m.group(3) else ""
        frac = ("." + "0" * (len(m.group(4)) - 1)) if m.group(4) else ""
        return f"{m.group(1)}:00{sec}{frac}{m.group(5)}"
    d = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    if spec.method == "geo_round":
        q = d.quantize(Decimal(1).scaleb(-spec.decimals), rounding=ROUND_HALF_UP)
        # a JSON number (integer or not) stays a number, at the grid's precision; a string stays
        # a string
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(q) if numeric else str(q)
    if spec.method == "round":
        step = Decimal(repr(spec.step))
        r = (d / step).to_integral_value(rounding=ROUND_FLOOR) * step
        if isinstance(value, int):
            return int(r)
        return float(r)
    raise AssertionError(spec.method)


def ref_date_shift(value: str, subject: str, spec, ring: Keyring) -> str:
    import datetime as dt

    key = hmac.digest(ring.resolve(spec.key).material, b"raymask/date_shift/v1", "sha256")
    u = int.from_bytes(hmac.digest(key, subject.encode(), "sha256")[:8], "big")
    offset = u % (2 * spec.max_days + 1) - spec.max_days
    day = dt.date.fromisoformat(value[:10]) + dt.timedelta(days=offset)
    return day.isoformat() + value[10:]


def ref_apply(
    value: Any,
    spec,
    ring: Keyring,
    csv_mode: bool = False,
    path: str = "",
    record: dict | None = None,
    key_path: str = "",
) -> Any:
    """Expected output value; ValueError when the record must go to the dead letters."""
    t = spec.technique
    if value is ABSENT or value is None or t == "keep":
        return value
    if csv_mode and value == "":
        return value  # empty cell = null
    if t == "redact":
        if spec.replacement is None:
            return None
        if csv_mode or isinstance(value, str):
            return spec.replacement
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return spec.number_replacement
        return None
    if isinstance(value, (dict, list, bool)):
        raise ValueError("kind")
    text = _text(value)
    if t == "mask":
        out = ref_mask(text, spec)
        if out is None:
            raise ValueError("shape")
        return out
    if t == "tokenize":
        return ref_token(text, spec, ring)
    if t == "fpe":
        out = ref_fpe(text, spec, ring)
        if out is None:
            raise ValueError("domain")
        return out
    if t == "encrypt":
        return ref_encrypt(text, spec, ring, path)
    if t == "generalize":
        return ref_generalize(value, spec)
    if t == "date_shift":
        subject = get_path(record, spec.subject_field or key_path, csv_mode)
        return ref_date_shift(text, _text(subject), spec, ring)
    raise AssertionError(t)


def read_records(data: bytes, fmt: str) -> list[dict]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
