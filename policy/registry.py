"""Techniques by name: each is its pydantic spec plus an `apply` that runs its kernel.

`apply(values, kinds, spec, keyring)` takes one field's values of a batch (a large_string array,
null where the value is null or missing) and their JSON kinds, and returns an `Applied`: the new
values, which of them are raw literals rather than strings (numbers, booleans), and an error code
per value (0 = ok). Codecs then write the new values in their own syntax.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymask.errors import KeyringError
from raymask.kernels import date_shift as shift_kernel
from raymask.kernels import detect as detect_kernel
from raymask.kernels import fpe as fpe_kernel
from raymask.kernels import generalize as gen_kernel
from raymask.kernels import mask as mask_kernel
from raymask.kernels import noise as noise_kernel
from raymask.kernels import rr as rr_kernel
from raymask.kernels import siv as siv_kernel
from raymask.kernels import tokenize as tok_kernel
from raymask.kernels._arrow import as_text, large_strings, null_strings, take_strings, validity
from raymask.kernels._keepgil import take_rows
from raymask.kernels.codecs.spans import (
    K_ARRAY,
    K_FALSE,
    K_MISSING,
    K_NULL,
    K_NUMBER,
    K_OBJECT,
    K_STRING,
    K_TRUE,
    KIND_NAMES,
)
from raymask.kernels.numtext import number_text
from raymask.kernels.rng import SecureRandom
from raymask.policy.keys import Keyring
from raymask.policy.schema import (
    DateShift,
    Detect,
    Encrypt,
    Fpe,
    Generalize,
    Keep,
    Mask,
    Noise,
    RandomizedResponse,
    Redact,
    Segregate,
    Tokenize,
)

__all__ = [
    "Applied",
    "FieldContext",
    "Technique",
    "REGISTRY",
    "check_key",
    "detect_and_replace",
    "kind_error_code",
    "error_message",
    "privacy_cost",
    "rr_categories",
]

KIND_ERROR_BASE = 100  # error code 100 + kind: the technique does not take values of that kind


@dataclass
class Applied:
    values: pa.Array  # new value per row; null = JSON null / empty CSV cell
    raw: np.ndarray | None  # bool per row: value is a literal (number, boolean), not a string
    err: np.ndarray  # int16 per row, 0 = ok
    side: pa.Table | None = None  # rows for a side sink (segregate: the vault), with a `row` column


@dataclass(frozen=True)
class Technique:
    name: str
    spec: type
    apply: Callable[..., Applied] | None  # (values, kinds, spec, keyring, ctx) -> Applied
    errors: dict[int, str]
    accepts: tuple[int, ...]  # value kinds the technique takes
    needs_values: bool = True  # False: works from the kinds alone (no extraction)


def kind_error_code(kind: int) -> int:
    return KIND_ERROR_BASE + kind


_REFUSED: dict[tuple[int, ...], np.ndarray] = {}  # accepted kinds -> error code per kind


def _kind_check(kinds: np.ndarray, accepts: tuple[int, ...]) -> np.ndarray:
    """Per value: 0, or the error code of a kind the technique does not take (missing and null
    values are never errors). A table lookup per value: np.isin costs ~60 us a call."""
    table = _REFUSED.get(accepts)
    if table is None:
        table = np.array([0 if k in (K_MISSING, K_NULL) or k in accepts else KIND_ERROR_BASE + k
                          for k in range(256)], np.int16)  # fmt: skip
        _REFUSED[accepts] = table
    return take_rows(table, kinds.view(np.uint8))


def _apply_redact(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Redact,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    n = len(values)
    if spec.replacement is None:
        return Applied(null_strings(n), None, np.zeros(n, np.int16))
    num = spec.number_replacement
    num_text = repr(num) if isinstance(num, float) else str(num)
    dictionary = _redact_values(spec.replacement, num_text)
    idx = take_rows(_REDACT_INDEX, kinds.view(np.uint8))  # 0 string, 1 number, 2 boolean, -1 none
    out = take_strings(dictionary, idx)
    raw = idx > 0
    return Applied(out, raw, np.zeros(n, np.int16))


_REDACT_INDEX = np.full(256, -1, np.int8)
_REDACT_INDEX[[K_STRING, K_NUMBER, K_TRUE, K_FALSE]] = [0, 1, 2, 2]


@functools.lru_cache(maxsize=256)
def _redact_values(replacement: str, number: str) -> pa.Array:
    """What a redacted string, number and boolean become."""
    return pa.array([replacement, number, "false"], pa.large_string())


def _apply_mask(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Mask,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    vals = values
    if err.any():
        vals = pc.if_else(pa.array(err == 0), values, pa.scalar(None, values.type))
    out, kerr = mask_kernel.mask(
        vals, keep_first=spec.keep_first, keep_last=spec.keep_last, char=spec.char, mode=spec.mode,
        preset=spec.preset,
    )  # fmt: skip
    err = np.where(err != 0, err, kerr.astype(np.int16))
    return Applied(out, None, err)


def _apply_tokenize(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Tokenize,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    vals = values
    if err.any():
        vals = pc.if_else(pa.array(err == 0), values, pa.scalar(None, values.type))
    key = keyring.resolve(spec.key)
    prefix = spec.prefix + (f"v{key.version}_" if spec.version_tag else "")
    out = tok_kernel.tokenize(
        vals, key.material, encoding=spec.encoding, length=spec.length, prefix=prefix
    )
    return Applied(out, None, err)


class FieldContext:
    """What a technique may read besides its own column: other fields of the same records, and
    the worker's secure random source (local-DP techniques)."""

    def __init__(
        self,
        column: Callable[[str], pa.Array],
        path: str,
        key_path: str = "",
        rng: SecureRandom | None = None,
    ) -> None:
        self.column = column
        self.path = path
        self.key_path = key_path
        self.rng = rng


def _only_ok(values: pa.Array, err: np.ndarray) -> pa.Array:
    return (
        pc.if_else(pa.array(err == 0), values, pa.scalar(None, values.type))
        if err.any()
        else values
    )


def _apply_fpe(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Fpe,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    key = keyring.resolve(spec.key)
    tweak: bytes | pa.Array = (spec.tweak or "").encode()
    if spec.tweak_field is not None and ctx is not None:
        tweak = ctx.column(spec.tweak_field)
    out, kerr = fpe_kernel.fpe_encrypt(
        _only_ok(values, err), key.material, radix=spec.radix, mode=spec.algorithm, tweak=tweak,
        keep_last=spec.keep_last, luhn=spec.luhn,
    )  # fmt: skip
    err = np.where(err != 0, err, kerr.astype(np.int16))
    return Applied(out, None, err)


def _apply_encrypt(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Encrypt,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    key = keyring.resolve(spec.key)
    ad = ctx.path.encode() if (spec.bind_field and ctx is not None) else None
    out = siv_kernel.encrypt_column(
        _only_ok(values, err), key.material, key.version, prefix=spec.prefix, ad=ad
    )
    return Applied(out, None, err)


VAULT_REF_CONTEXT = b"raymask/vault/ref/v1"
VAULT_SEP = "\x1f"


def _apply_segregate(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Segregate,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    """Reference = "vault:" + base32(HMAC(k_ref, subject, path, value))[:26], k_ref derived from
    the key; the vault row holds the reference, the subject's token (HMAC of the record key
    under k_ref: a vault can be searched per subject, e.g. to erase one) and the AES-SIV
    ciphertext of reference + value bound to the field path, so a ciphertext opens only as the
    value of its own reference (raymask.cluster.reveal.reveal_vault)."""
    if ctx is None:
        raise ValueError("segregate needs the record's key field")
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    key = keyring.resolve(spec.key)
    k_ref = hmac.digest(key.material, VAULT_REF_CONTEXT, "sha256")
    text = pc.cast(as_text(_only_ok(values, err)), pa.large_string())
    subject = pc.cast(as_text(ctx.column(ctx.key_path)), pa.large_string())
    joined = pc.binary_join_element_wise(
        subject, pa.scalar(ctx.path, pa.large_string()), text,
        pa.scalar(VAULT_SEP, pa.large_string()),
    )  # fmt: skip
    ref = tok_kernel.tokenize(joined, k_ref, encoding="base32", length=26, prefix="vault:")
    sealed = siv_kernel.encrypt_column(
        pc.binary_join_element_wise(
            pc.cast(ref, pa.large_string()), text, pa.scalar(VAULT_SEP, pa.large_string())
        ),
        key.material, key.version, ad=ctx.path.encode(),
    )  # fmt: skip
    has = np.asarray(ref.is_valid().to_numpy(zero_copy_only=False), np.bool_)
    rows = np.flatnonzero(has)
    side = pa.table({
        "row": pa.array(rows),
        "ref": ref.take(pa.array(rows)),
        "subject": tok_kernel.tokenize(
            subject.take(pa.array(rows)), k_ref, encoding="base32", length=26, prefix="sub_"
        ),
        "field": pa.repeat(pa.scalar(ctx.path, pa.string()), len(rows)),
        "sealed": sealed.take(pa.array(rows)),
    })  # fmt: skip
    return Applied(ref, None, err, side)


DATE_SHIFT_CONTEXT = b"raymask/date_shift/v1"

_GEN_ACCEPTS = {
    "round": (K_STRING, K_NUMBER),
    "bucket": (K_STRING, K_NUMBER),
    "age_band": (K_STRING, K_NUMBER),
    "geo_round": (K_STRING, K_NUMBER),
    "truncate_time": (K_STRING,),
    "ip_prefix": (K_STRING,),
}
GEN_ERROR_BASE = 0  # generalize kernel codes are used as they are


def _apply_generalize(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Generalize,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, _GEN_ACCEPTS[spec.method])
    vals = _only_ok(values, err)
    raw = None
    if spec.method == "round":
        out, kerr = gen_kernel.round_numbers(vals, spec.step, spec.mode)
        raw = kinds == K_NUMBER  # numbers stay numbers; numbers written as strings stay strings
    elif spec.method == "geo_round":
        out, kerr = gen_kernel.geo_round(vals, spec.decimals)
        raw = kinds == K_NUMBER
    elif spec.method == "bucket":
        out, kerr = gen_kernel.bucket(vals, spec.edges, spec.labels)
    elif spec.method == "age_band":
        out, kerr = gen_kernel.age_band(vals, spec.width, spec.top)
    elif spec.method == "truncate_time":
        out, kerr = gen_kernel.truncate_timestamps(vals, spec.unit)
    else:
        out, kerr = gen_kernel.ip_prefix(vals, spec.v4_bits, spec.v6_bits)
    err = np.where(err != 0, err, kerr.astype(np.int16))
    return Applied(large_strings(out), raw, err)


def _apply_date_shift(
    values: pa.Array,
    kinds: np.ndarray,
    spec: DateShift,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING,))
    if ctx is None:
        raise ValueError("date_shift needs the record context")
    subjects = ctx.column(spec.subject_field or ctx.key_path)
    # A sub-key for this purpose only: with the key itself, HMAC(key, subject) would be the very
    # digest that tokenize publishes for the subject under the same key, and offsets would leak.
    sub_key = _date_shift_key(keyring.resolve(spec.key).material)
    out, kerr = shift_kernel.date_shift(_only_ok(values, err), subjects, sub_key, spec.max_days)
    # a null subject is an error only where there is a date to shift
    kerr = np.where(err != 0, 0, kerr)
    err = np.where(err != 0, err, kerr.astype(np.int16))
    return Applied(large_strings(out), None, err)


@functools.lru_cache(maxsize=64)
def _date_shift_key(material: bytes) -> bytes:
    """date_shift's sub-key of a key (derived once per key, not per batch)."""
    return hmac.digest(material, DATE_SHIFT_CONTEXT, "sha256")


# a JSON number, also accepted inside a string (CSV cells, numbers sent as text)
_NUMBER_RE = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
NOISE_ERRORS = {1: "not a number"}
RR_ERRORS = {1: "value is not one of the categories"}


def _rng(ctx: FieldContext | None) -> SecureRandom:
    if ctx is None or ctx.rng is None:
        raise ValueError("local-DP techniques need the worker's secure random source")
    return ctx.rng


def _apply_noise(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Noise,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    text = _only_ok(values, err)
    strings = kinds == K_STRING
    if strings.any():  # numbers sent as text must read as numbers (the codecs check numbers)
        numeric = pc.fill_null(pc.match_substring_regex(text, _NUMBER_RE), True).to_numpy(
            zero_copy_only=False
        )
        err[strings & ~numeric & (err == 0)] = 1
    x = pc.cast(_only_ok(text, err), pa.float64())
    if spec.integer and x.null_count < len(x):  # a NaN (from a protobuf double) has no integer
        nan = pc.fill_null(pc.is_nan(x), False).to_numpy(zero_copy_only=False)
        if nan.any():
            err[nan & (err == 0)] = 1
            x = pc.cast(_only_ok(text, err), pa.float64())
    rng = _rng(ctx)
    if spec.mechanism == "laplace":
        out = noise_kernel.laplace_noise(
            x, spec.lo, spec.hi, spec.epsilon, integer=spec.integer, rng=rng, round_to=spec.round_to
        )
    else:
        out = noise_kernel.gaussian_noise(
            x, spec.lo, spec.hi, spec.epsilon, spec.delta, integer=spec.integer, rng=rng,
            round_to=spec.round_to,
        )  # fmt: skip
    if spec.integer:
        out = pc.cast(out, pa.int64())
    # numbers stay numbers, numbers sent as text stay text (Arrow's text, by a faster writer)
    return Applied(
        number_text(out, noise_kernel.round_decimals(spec.round_to)), kinds == K_NUMBER, err
    )


def rr_categories(spec: RandomizedResponse) -> tuple[list[str], tuple[int, ...]]:
    """The categories as the text a codec extracts, and the value kinds that may hold them."""
    if spec.categories is None:
        return ["false", "true"], (K_TRUE, K_FALSE, K_STRING)
    if isinstance(spec.categories[0], int):
        return [str(c) for c in spec.categories], (K_NUMBER, K_STRING)
    return list(spec.categories), (K_STRING,)


def _apply_rr(
    values: pa.Array,
    kinds: np.ndarray,
    spec: RandomizedResponse,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    cats, accepts = rr_categories(spec)
    err = _kind_check(kinds, accepts)
    idx = pc.index_in(_only_ok(values, err), value_set=pa.array(cats, pa.large_string()))
    present = validity(values) & (err == 0)
    err[present & ~validity(idx)] = 1
    ok = present & (err == 0)
    ix = idx.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = rr_kernel.randomize_indices(ix, ok, len(cats), spec.epsilon, _rng(ctx))
    new = pa.array(cats, pa.large_string()).take(pa.array(out))
    new = pc.if_else(pa.array(ok), new, pa.scalar(None, pa.large_string()))
    return Applied(new, kinds != K_STRING, err)


def detect_patterns(spec: Detect) -> list[detect_kernel.Pattern]:
    return [
        detect_kernel.Pattern(p.name, p.regex, p.validator, p.confidence) for p in spec.patterns
    ]


def detect_and_replace(
    values: pa.Array, spec: Detect, keyring: Keyring
) -> tuple[pa.Array, detect_kernel.Spans]:
    """`values` with every span `spec` finds replaced (per type: `<TYPE>`, the text in
    `spec.replace`, or the span's keyed token); also returns the spans."""
    types = list(spec.types) if spec.types is not None else None
    spans = detect_kernel.detect(values, types, detect_patterns(spec), spec.min_confidence)
    names = spans.names
    secret = set(detect_kernel.SECRET_TYPES)

    def rule(name: str) -> str:
        r = spec.replace.get(name)
        if r is None and name in secret:
            r = spec.replace.get("secret")
        return r if r is not None else f"<{name.upper()}>"

    rules = [rule(n) for n in names]
    table: list[bytes] | pa.Array = [r.encode() for r in rules]
    idx = spans.type.astype(np.int64)
    tok_types = [t for t, r in enumerate(rules) if r == "token"]
    if tok_types and len(spans):
        is_tok = np.isin(spans.type, tok_types)
        if is_tok.any():
            key = keyring.resolve(spec.key)  # type: ignore[arg-type]
            texts = detect_kernel.span_texts(values, spans.take(is_tok))
            tokens = tok_kernel.tokenize(
                texts, key.material, encoding=spec.encoding, length=spec.length, prefix=spec.prefix
            )
            # the table: one entry per type, then one token per tokenized span (all Arrow)
            table = pa.concat_arrays(
                [pa.array(rules, pa.large_string()), tokens.cast(pa.large_string())]
            )
            idx[is_tok] = len(names) + np.arange(int(is_tok.sum()))
    return detect_kernel.splice(values, spans, table, idx), spans


def _apply_detect(
    values: pa.Array,
    kinds: np.ndarray,
    spec: Detect,
    keyring: Keyring,
    ctx: FieldContext | None = None,
) -> Applied:
    err = _kind_check(kinds, (K_STRING, K_NUMBER))
    out, spans = detect_and_replace(_only_ok(values, err), spec, keyring)
    hit = np.zeros(len(values), np.bool_)
    hit[spans.record] = True
    # a number nothing was found in stays a number; one with a span becomes a string
    return Applied(out.cast(pa.large_string()), (kinds == K_NUMBER) & ~hit, err)


def privacy_cost(spec: object) -> tuple[float, float, float] | None:
    """(epsilon, delta, rho) one value of a local-DP technique spends, None for the others.

    rho is its zero-concentrated DP (Bun and Steinke 2016): epsilon**2 / 2 for a pure
    epsilon-DP mechanism (their Proposition 1.4), D**2 / (2 sigma**2) for the discrete Gaussian
    with sensitivity D in grid steps (Canonne, Kamath and Steinke 2020, Theorem 14).
    """
    if isinstance(spec, RandomizedResponse):
        return spec.epsilon, 0.0, spec.epsilon**2 / 2
    if isinstance(spec, Noise):
        if spec.mechanism == "laplace":
            return spec.epsilon, 0.0, spec.epsilon**2 / 2
        plan = noise_kernel.gaussian_plan(spec.lo, spec.hi, spec.epsilon, spec.delta, spec.integer)
        return spec.epsilon, float(spec.delta), plan.D**2 * plan.sd / (2 * plan.sn)
    return None


def check_key(technique: str, spec: object, keyring: Keyring) -> None:
    """KeyringError when a technique's key is missing or has a length its cipher cannot use."""
    kid = getattr(spec, "key", None)
    if not isinstance(kid, str):
        return
    key = keyring.resolve(kid)
    sizes = {"fpe": (16, 24, 32), "encrypt": (32, 48, 64), "segregate": (32, 48, 64)}.get(technique)
    if sizes and len(key.material) not in sizes:
        raise KeyringError(
            f"key '{kid}' has {len(key.material)} bytes; {technique} needs {' or '.join(map(str, sizes))}"
        )


_ALL_KINDS = (K_STRING, K_NUMBER, K_TRUE, K_FALSE, K_OBJECT, K_ARRAY)

REGISTRY: dict[str, Technique] = {
    "keep": Technique("keep", Keep, None, {}, _ALL_KINDS),
    "redact": Technique("redact", Redact, _apply_redact, {}, _ALL_KINDS, needs_values=False),
    "mask": Technique("mask", Mask, _apply_mask, dict(mask_kernel.ERRORS), (K_STRING, K_NUMBER)),
    "tokenize": Technique("tokenize", Tokenize, _apply_tokenize, {}, (K_STRING, K_NUMBER)),
    "fpe": Technique("fpe", Fpe, _apply_fpe, dict(fpe_kernel.ERRORS), (K_STRING, K_NUMBER)),
    "encrypt": Technique("encrypt", Encrypt, _apply_encrypt, {}, (K_STRING, K_NUMBER)),
    "segregate": Technique("segregate", Segregate, _apply_segregate, {}, (K_STRING, K_NUMBER)),
    "generalize": Technique(
        "generalize", Generalize, _apply_generalize, dict(gen_kernel.ERRORS), (K_STRING, K_NUMBER)
    ),
    "date_shift": Technique(
        "date_shift", DateShift, _apply_date_shift, dict(shift_kernel.ERRORS), (K_STRING,)
    ),
    "noise": Technique("noise", Noise, _apply_noise, NOISE_ERRORS, (K_STRING, K_NUMBER)),
    "detect": Technique("detect", Detect, _apply_detect, {}, (K_STRING, K_NUMBER)),
    "randomized_response": Technique(
        "randomized_response",
        RandomizedResponse,
        _apply_rr,
        RR_ERRORS,
        (K_STRING, K_NUMBER, K_TRUE, K_FALSE),
    ),  # fmt: skip
}


def error_message(technique: str, code: int) -> str:
    """Text for an error code of `technique`; never contains the value."""
    if code >= KIND_ERROR_BASE:
        what = {"randomized_response": "a category or boolean"}.get(technique, "a string or number")
        return f"{technique} takes {what}, got {KIND_NAMES[code - KIND_ERROR_BASE]}"
    t = REGISTRY.get(technique)
    return (t.errors.get(code) if t else None) or f"{technique} failed (code {code})"
