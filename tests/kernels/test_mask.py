"""Partial masks (presets and generic) and redaction, counted in code points."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels.mask import ERRORS, mask, redact

OK = 0
E_EMAIL, E_CARD, E_PHONE, E_IBAN = 1, 2, 3, 4

# (value, mask() keyword arguments, expected output or None, expected error code)
MASK_TABLE = [
    # --- email: local part keeps its first code point, the domain is kept
    ("john.doe@example.com", {"preset": "email"}, "j*******@example.com", OK),
    ("Zoë@exämple.com", {"preset": "email"}, "Z**@exämple.com", OK),  # multi-byte local and domain
    ("a@b", {"preset": "email"}, "*@b", OK),  # one-code-point local part: short-value rule masks it
    ("ab@b", {"preset": "email"}, "a*@b", OK),
    ('"a@b"@example.com', {"preset": "email"}, '"****@example.com', OK),  # the LAST '@' splits
    ("no-at-sign", {"preset": "email"}, None, E_EMAIL),
    ("@example.com", {"preset": "email"}, None, E_EMAIL),  # empty local part
    ("user@", {"preset": "email"}, None, E_EMAIL),  # empty domain
    ("", {"preset": "email"}, None, E_EMAIL),
    # --- card: digits masked but the last four, separators kept; 12-19 digits
    ("4111 1111 1111 1111", {"preset": "card"}, "**** **** **** 1111", OK),
    ("4111-1111-1111-1111", {"preset": "card"}, "****-****-****-1111", OK),
    ("411111111111", {"preset": "card"}, "********1111", OK),  # 12 digits, the minimum
    ("4" * 19, {"preset": "card"}, "*" * 15 + "4444", OK),  # 19 digits, the maximum
    ("41111111111", {"preset": "card"}, None, E_CARD),  # 11 digits
    ("4" * 20, {"preset": "card"}, None, E_CARD),  # 20 digits
    ("4111.1111.1111.1111", {"preset": "card"}, None, E_CARD),  # dots are not card separators
    ("4111 1111 1111 111x", {"preset": "card"}, None, E_CARD),
    ("4111 1111 1111 １１１１", {"preset": "card"}, None, E_CARD),  # fullwidth digits are not ASCII
    ("", {"preset": "card"}, None, E_CARD),
    # --- phone: digits masked but the last two; 4-20 digits, '+' only in front
    ("+1 (555) 123-4567", {"preset": "phone"}, "+* (***) ***-**67", OK),
    ("555.1234", {"preset": "phone"}, "***.**34", OK),
    ("1234", {"preset": "phone"}, "**34", OK),  # 4 digits, the minimum
    ("1" * 20, {"preset": "phone"}, "*" * 18 + "11", OK),  # 20 digits, the maximum
    ("123", {"preset": "phone"}, None, E_PHONE),
    ("1" * 21, {"preset": "phone"}, None, E_PHONE),
    ("1+234", {"preset": "phone"}, None, E_PHONE),  # '+' not in front
    ("++1234", {"preset": "phone"}, None, E_PHONE),  # second '+'
    ("555/1234", {"preset": "phone"}, None, E_PHONE),
    ("call me", {"preset": "phone"}, None, E_PHONE),
    # --- iban: letters and digits masked but the first two and last four, spaces kept
    ("DE89 3704 0044 0532 0130 00", {"preset": "iban"}, "DE** **** **** **** **30 00", OK),
    ("GB82WEST12345698765432", {"preset": "iban"}, "GB" + "*" * 16 + "5432", OK),
    (
        "de89370400440532013000",
        {"preset": "iban"},
        "de" + "*" * 16 + "3000",
        OK,
    ),  # lower case accepted
    (
        "DE" + "1" * 13,
        {"preset": "iban"},
        "DE" + "*" * 9 + "1111",
        OK,
    ),  # 15 characters, the minimum
    (
        "DE" + "1" * 32,
        {"preset": "iban"},
        "DE" + "*" * 28 + "1111",
        OK,
    ),  # 34 characters, the maximum
    ("DE" + "1" * 12, {"preset": "iban"}, None, E_IBAN),  # 14 characters
    ("DE" + "1" * 33, {"preset": "iban"}, None, E_IBAN),  # 35 characters
    ("1234567890123456", {"preset": "iban"}, None, E_IBAN),  # no country letters
    ("D189370400440532013000", {"preset": "iban"}, None, E_IBAN),  # second character a digit
    ("DE89-3704-0044-0532-0130-00", {"preset": "iban"}, None, E_IBAN),  # dashes
    ("DÉ89370400440532013000", {"preset": "iban"}, None, E_IBAN),  # non-ASCII letter
    # --- generic (mode all): keep_first / keep_last
    ("abcdef", {"keep_first": 2, "keep_last": 2}, "ab**ef", OK),
    ("abcde", {"keep_first": 2, "keep_last": 2}, "ab*de", OK),  # one more than kept: one masked
    ("abcd", {"keep_first": 2, "keep_last": 2}, "****", OK),  # short-value rule: == kf + kl
    ("abc", {"keep_first": 2, "keep_last": 2}, "***", OK),  # short-value rule: < kf + kl
    ("abc", {"keep_first": 5}, "***", OK),  # keep_first alone longer than the value
    ("abcdef", {}, "******", OK),  # nothing kept
    ("abcdef", {"keep_last": 1}, "*****f", OK),
    ("a b", {"keep_first": 1}, "a**", OK),  # mode all masks spaces too
    ("", {"keep_first": 1, "keep_last": 1}, "", OK),  # empty stays empty
    # --- multi-byte characters are never split
    ("Zoë Łukasz", {"keep_first": 2, "keep_last": 2, "char": "•"}, "Zo••••••sz", OK),
    ("Zoë Łukasz", {"keep_first": 3, "keep_last": 3}, "Zoë****asz", OK),  # kept ë and masked Ł
    ("😀🙂x🎉", {"keep_first": 1, "keep_last": 1, "char": "•"}, "😀••🎉", OK),  # 4-byte code points
    ("日本語テキスト", {"keep_last": 2}, "*****スト", OK),  # 3-byte code points
    ("e\u0301e", {"keep_first": 1}, "e**", OK),  # combining mark: code points, not graphemes
    ("ab", {"char": "😀"}, "😀😀", OK),  # 4-byte mask character
    ("abc", {"keep_last": 1, "char": "xy"}, "xyxyc", OK),  # a multi-character mask string
    # --- mode digits / alnum / email without a preset (no shape check)
    ("ab12cd34", {"mode": "digits", "keep_last": 1}, "ab**cd*4", OK),
    ("no digits", {"mode": "digits", "keep_last": 1}, "no digits", OK),  # nothing maskable
    ("1", {"mode": "digits", "keep_last": 1}, "*", OK),  # short-value rule in digits mode
    ("a-b-c", {"mode": "alnum", "keep_first": 1}, "a-*-*", OK),
    ("é-1-ü", {"mode": "alnum"}, "é-*-ü", OK),  # non-ASCII letters are not alnum
    ("no-at-sign", {"mode": "email", "keep_first": 1}, "n*********", OK),  # no '@': all local
]


@pytest.mark.parametrize(("value", "kwargs", "expected", "code"), MASK_TABLE)
def test_mask_table(value, kwargs, expected, code):
    for typ in (pa.string(), pa.large_string()):
        out, err = mask(pa.array([value], typ), **kwargs)
        assert out.type == typ
        assert err.tolist() == [code]
        assert out.to_pylist() == [expected]
        if code:
            assert code in ERRORS


def test_mask_preserves_nulls_and_nulls_the_errors():
    values = ["4111 1111 1111 1111", None, "123", None, "5500-0000-0000-0004"]
    out, err = mask(pa.array(values), preset="card")
    assert err.tolist() == [0, 0, E_CARD, 0, 0]  # a null is not an error
    assert out.to_pylist() == ["**** **** **** 1111", None, None, None, "****-****-****-0004"]


def test_mask_accepts_chunked_and_sliced_arrays():
    chunked = pa.chunked_array([pa.array(["abcdef", None]), pa.array(["Zoë Łukasz"])])
    out, err = mask(chunked, keep_first=1, keep_last=1)
    assert out.to_pylist() == ["a****f", None, "Z********z"] and not err.any()
    sliced = pa.array(["skip", "abcdef", "xyz"]).slice(1)
    out, err = mask(sliced, keep_last=1)
    assert out.to_pylist() == ["*****f", "**z"]


def test_mask_of_empty_array_is_empty():
    out, err = mask(pa.array([], pa.string()), keep_first=1)
    assert len(out) == 0 and len(err) == 0


# --- property: mode all against a pure-Python reference -------------------------------------


def _ref_mask_all(v: str | None, kf: int, kl: int, ch: str) -> str | None:
    """Generic mask over code points, with the short-value rule."""
    if v is None:
        return None
    n = len(v)
    if n <= kf + kl:
        return ch * n
    return v[:kf] + ch * (n - kf - kl) + v[n - kl :]


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.none() | st.text(max_size=30), max_size=20),
    kf=st.integers(0, 6),
    kl=st.integers(0, 6),
    ch=st.sampled_from(["*", "•", "X", "😀", "#"]),
    large=st.booleans(),
)
def test_mask_all_matches_reference_on_random_unicode(values, kf, kl, ch, large):
    typ = pa.large_string() if large else pa.string()
    out, err = mask(pa.array(values, typ), keep_first=kf, keep_last=kl, char=ch, mode="all")
    assert not err.any()
    assert out.to_pylist() == [_ref_mask_all(v, kf, kl, ch) for v in values]


# --- property: every mode and preset against a pure-Python reference ------------------------

DIGITS = set("0123456789")
LETTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# (mode, keep_first, keep_last, shape check) of each preset, as the module documents them
PRESET_RULES = {
    "email": ("email", 1, 0, "email"), "card": ("digits", 0, 4, "card"),
    "phone": ("digits", 0, 2, "phone"), "iban": ("alnum", 2, 4, "iban"),
}  # fmt: skip


def _shape_error(v: str, check: str | None) -> int:
    """The preset's shape check, written from its error message (0: the value passes)."""
    if check == "email":
        at = v.rfind("@")
        return OK if 0 < at < len(v) - 1 else E_EMAIL
    if check == "card":
        ok = set(v) <= DIGITS | {" ", "-"} and 12 <= sum(c in DIGITS for c in v) <= 19
        return OK if ok else E_CARD
    if check == "phone":
        ok = (
            set(v) <= DIGITS | set(" -.()+") and "+" not in v[1:]
            and 4 <= sum(c in DIGITS for c in v) <= 20
        )  # fmt: skip
        return OK if ok else E_PHONE
    if check == "iban":
        alnum = [c for c in v if c in DIGITS | LETTERS]
        ok = (
            set(v) <= DIGITS | LETTERS | {" "} and all(c in LETTERS for c in alnum[:2])
            and 15 <= len(alnum) <= 34
        )  # fmt: skip
        return OK if ok else E_IBAN
    return OK


def _ref_mask(v: str | None, mode: str, kf: int, kl: int, ch: str, check: str | None):
    """(masked value or None, error code), code point by code point."""
    if v is None:
        return None, OK
    if (code := _shape_error(v, check)) != OK:
        return None, code
    region, rest = v, ""
    if mode == "email" and "@" in v:
        at = v.rfind("@")
        region, rest = v[:at], v[at:]

    def maskable(c: str) -> bool:
        return {"digits": c in DIGITS, "alnum": c in DIGITS | LETTERS}.get(mode, True)

    m = sum(maskable(c) for c in region)
    if m <= kf + kl:
        kf = kl = 0
    out, idx = [], 0
    for c in region:
        if maskable(c):
            out.append(c if idx < kf or idx >= m - kl else ch)
            idx += 1
        else:
            out.append(c)
    return "".join(out) + rest, OK


# the characters the presets and modes tell apart, and a few that are none of them
SHAPES = st.text(alphabet=st.sampled_from(list("0123456789 -+.()@aZqx\u00e9\u20ac\U0001f600")),
                 max_size=30)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.none() | SHAPES | st.from_regex(r"[A-Z]{2}[0-9 ]{13,34}", fullmatch=True)
                    | st.from_regex(r"\+?[0-9 ().-]{4,24}", fullmatch=True), max_size=20),
    preset=st.sampled_from([None, *PRESET_RULES]),
    mode=st.sampled_from(["all", "digits", "alnum", "email"]),
    kf=st.integers(0, 5),
    kl=st.integers(0, 5),
    ch=st.sampled_from(["*", "\u2022", "\U0001f600"]),
)  # fmt: skip
def test_every_mode_and_preset_matches_reference(values, preset, mode, kf, kl, ch):
    check = None
    if preset is not None:
        mode, kf, kl, check = PRESET_RULES[preset]
    out, err = mask(pa.array(values, pa.string()), keep_first=kf, keep_last=kl, char=ch,
                    mode=mode, preset=preset)  # fmt: skip
    want = [_ref_mask(v, mode, kf, kl, ch, check) for v in values]
    assert out.to_pylist() == [w for w, _ in want]
    assert err.tolist() == [c for _, c in want]


# --- redact ----------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
@pytest.mark.parametrize("replacement", ["[REDACTED]", "", "•••"])  # empty and multi-byte too
def test_redact_replaces_every_value_and_keeps_nulls(typ, replacement):
    out = redact(pa.array(["alice", None, "", "Zoë"], typ), replacement)
    assert out.type == typ
    assert out.to_pylist() == [replacement, None, replacement, replacement]


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_redact_to_none_nulls_everything(typ):
    out = redact(pa.array(["alice", None, ""], typ), None)
    assert out.type == typ and out.null_count == 3 and len(out) == 3


def test_redact_of_empty_array_is_empty():
    out = redact(pa.array([], pa.string()), "x")
    assert len(out) == 0 and out.type == pa.string()


def test_redact_accepts_chunked_arrays():
    out = redact(pa.chunked_array([pa.array(["a", None]), pa.array(["b"])]), "#")
    assert out.to_pylist() == ["#", None, "#"]
    assert np.asarray(out.is_null()).tolist() == [False, True, False]
