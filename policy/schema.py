"""The policy file, as pydantic models. Validated once, at the edge; the inside trusts it.

```yaml
version: 3                      # the policy's version; every output batch carries it
streams:
  payments:                     # stream name
    format: ndjson              # ndjson | csv | xml (with xml: options) | protobuf (with protobuf:)
    key: account.id             # sharding key, and the DP subject unless a field says otherwise
    unknown_fields: keep        # fields the policy does not name: keep | drop | detect
    fields:                     # the default view: the strictest, what an unnamed role sees
      account.id:     {technique: tokenize, key: tok, encoding: base32, length: 16}
      card.number:    {technique: mask, preset: card}
      customer.name:  redact    # shorthand for {technique: redact}
    views:                      # per role: overrides of the default view
      ops:
        customer.email: keep
```
A field is addressed by path: nested JSON keys joined by dots (`a.b.c`), a CSV column name,
protobuf field names joined by dots (`customer.email`), or XML element steps joined by slashes
relative to the record element, optionally ending in an attribute (`Cdtr/Nm`, `@deviceId`).
Keys never appear here: `key:` names a key id in the keyring.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from raymask.kernels.detect import TYPES

__all__ = [
    "TECHNIQUES",
    "Policy",
    "Stream",
    "FieldSpec",
    "Keep",
    "Redact",
    "Mask",
    "Tokenize",
    "Fpe",
    "Encrypt",
    "Generalize",
    "DateShift",
    "Noise",
    "RandomizedResponse",
    "Budget",
    "Aggregate",
    "Detect",
    "DetectPattern",
    "DETECT_TYPES",
    "LeakCheck",
    "XmlOptions",
    "ProtobufOptions",
]

TECHNIQUES = (
    "keep",
    "redact",
    "mask",
    "tokenize",
    "fpe",
    "encrypt",
    "generalize",
    "date_shift",
    "noise",
    "randomized_response",
    "detect",
)

_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_KEY_ID = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
_HEXISH = re.compile(r"^[0-9a-fA-F]{24,}$")


def _key_id(v: str) -> str:
    if _HEXISH.match(v) or (
        len(v) >= 32 and any(c.isdigit() for c in v) and any(c.isupper() for c in v)
    ):
        raise ValueError("looks like key material; name a key id from the keyring instead")
    return v


KeyId = Annotated[
    str,
    Field(pattern=_KEY_ID, description="Id of a key in the keyring (never the key itself)."),
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    built: ClassVar[bool] = True


class Keep(_Spec):
    """The value passes unchanged."""

    technique: Literal["keep"]


class Redact(_Spec):
    """Every value is replaced by a constant of its own JSON type; nulls stay null."""

    technique: Literal["redact"]
    replacement: str | None = Field(
        "[REDACTED]", description="Constant for string values; null replaces every value by null."
    )
    number_replacement: int | float = Field(0, description="Constant for numeric values.")


class Mask(_Spec):
    """Partial mask: keep the first/last code points, replace the rest with a mask character."""

    technique: Literal["mask"]
    preset: Literal["email", "card", "phone", "iban"] | None = Field(
        None,
        description="email: first character + domain; card: last 4 digits, separators kept; "
        "phone: last 2 digits; iban: country code + last 4.",
    )
    keep_first: int = Field(0, ge=0, le=64, description="Code points kept at the start.")
    keep_last: int = Field(0, ge=0, le=64, description="Code points kept at the end.")
    char: str = Field("*", description="The mask character (one code point).")
    mode: Literal["all", "digits", "alnum"] = Field(
        "all", description="Which code points are masked: all, ASCII digits, or letters and digits."
    )

    @field_validator("char")
    @classmethod
    def _one_code_point(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError("must be exactly one character")
        return v

    @model_validator(mode="after")
    def _preset_fixes_counts(self) -> Mask:
        if self.preset and (self.keep_first or self.keep_last or self.mode != "all"):
            raise ValueError(
                f"preset {self.preset} fixes keep_first, keep_last and mode; drop them or drop the preset"
            )
        return self


_TOKEN_CHARS = {"hex": 64, "base32": 52, "base64url": 43}


class Tokenize(_Spec):
    """Keyed HMAC-SHA-256 token: same key version, same value, same token, in every stream."""

    technique: Literal["tokenize"]
    key: Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)]
    encoding: Literal["hex", "base32", "base64url"] = "base32"
    length: int | None = Field(None, ge=8, description="Characters kept of the encoded digest.")
    prefix: str = Field(
        "", pattern=r"^[A-Za-z0-9_:.-]{0,16}$", description="Text put before the token."
    )
    version_tag: bool = Field(False, description="Put the key version (v1_) before the token.")

    @model_validator(mode="after")
    def _length_fits(self) -> Tokenize:
        top = _TOKEN_CHARS[self.encoding]
        if self.length is not None and self.length > top:
            raise ValueError(f"length must be <= {top} for encoding {self.encoding}")
        return self


class _NotBuilt(_Spec):
    """A technique the schema knows but this version cannot run yet (refused at compile time)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    built: ClassVar[bool] = False


class Fpe(_Spec):
    """Format-preserving encryption (FF1, or FF3-1 for compatibility): same length, same
    alphabet, separators kept; reversible by `raymask reveal` with the key."""

    technique: Literal["fpe"]
    key: Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)]
    algorithm: Literal["ff1", "ff3-1"] = Field("ff1", description="FF1 (default) or FF3-1.")
    radix: Literal[10, 26, 36, 62] = Field(
        10, description="10 digits, 26 a-z, 36 0-9a-z, 62 0-9a-zA-Z; other characters are kept."
    )
    tweak: str | None = Field(None, max_length=64, description="A constant tweak (not secret).")
    tweak_field: FieldPath | None = Field(
        None, description="Use this field's (input) value as the tweak of each record."
    )
    keep_last: int = Field(0, ge=0, le=16, description="Numerals left in clear at the end.")
    luhn: bool = Field(False, description="Card numbers: the output is Luhn-valid too.")

    @model_validator(mode="after")
    def _consistent(self) -> Fpe:
        if self.tweak is not None and self.tweak_field is not None:
            raise ValueError("give tweak or tweak_field, not both")
        if self.luhn and self.radix != 10:
            raise ValueError("luhn needs radix 10")
        return self


class Encrypt(_Spec):
    """Deterministic, reversible encryption (AES-SIV): equal values give equal ciphertexts."""

    technique: Literal["encrypt"]
    key: Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)]
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_:-]{0,16}$", description="Text put before v<N>.")
    bind_field: bool = Field(
        True, description="Bind each ciphertext to its field path, so it only decrypts there."
    )


class Segregate(_Spec):
    """The value leaves for a vault (sealed with AES-SIV, bound to its reference); the record
    keeps only the reference `vault:<26 base32>`, which `raymask reveal --vault` turns back."""

    technique: Literal["segregate"]
    key: Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)]


class Generalize(_Spec):
    """Coarser values: rounded numbers, buckets, truncated timestamps, IP prefixes, rounded
    coordinates, age bands."""

    technique: Literal["generalize"]
    method: Literal["round", "bucket", "truncate_time", "ip_prefix", "geo_round", "age_band"]
    step: float | None = Field(
        None, gt=0, description="round: the bucket width (10 -> 10, 20, ...)."
    )
    mode: Literal["floor", "nearest"] = Field(
        "floor", description="round: floor, or nearest (ties away from 0)."
    )
    edges: list[float] | None = Field(None, min_length=1, description="bucket: ascending edges.")
    labels: list[str] | None = Field(
        None, description="bucket: one label per bucket (len(edges) + 1)."
    )
    unit: Literal["minute", "hour", "day", "month"] | None = Field(
        None, description="truncate_time: the unit."
    )
    v4_bits: int = Field(24, ge=0, le=32, description="ip_prefix: IPv4 prefix length.")
    v6_bits: int = Field(48, ge=0, le=128, description="ip_prefix: IPv6 prefix length.")
    decimals: int | None = Field(None, ge=0, le=10, description="geo_round: decimals kept.")
    width: int = Field(10, ge=1, le=100, description="age_band: band width in years.")
    top: int | None = Field(90, ge=1, description="age_band: ages from here on are one band.")

    @model_validator(mode="after")
    def _params_for_method(self) -> Generalize:
        need = {
            "round": "step",
            "bucket": "edges",
            "truncate_time": "unit",
            "geo_round": "decimals",
        }
        p = need.get(self.method)
        if p and getattr(self, p) is None:
            raise ValueError(f"method {self.method} needs {p}")
        if self.edges is not None and sorted(self.edges) != self.edges:
            raise ValueError("edges must be in ascending order")
        if self.labels is not None and (
            self.edges is None or len(self.labels) != len(self.edges) + 1
        ):
            raise ValueError("labels needs one label per bucket: len(edges) + 1")
        return self


class DateShift(_Spec):
    """Dates moved by a per-subject offset in [-max_days, +max_days], the same for every record of
    one subject, so intervals within a subject are kept."""

    technique: Literal["date_shift"]
    key: Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)]
    max_days: int = Field(30, ge=1, le=8191, description="Largest shift, in days.")
    subject_field: FieldPath | None = Field(
        None, description="Whose offset: this field (default: the stream key)."
    )


class Noise(_Spec):
    """Local DP on a number: clamp to [lo, hi], then add exact Laplace (epsilon) or discrete
    Gaussian (epsilon, delta) noise calibrated to the sensitivity hi - lo (raymask.kernels.noise)."""

    technique: Literal["noise"]
    mechanism: Literal["laplace", "gaussian"] = Field(
        "laplace", description="laplace: pure epsilon-DP; gaussian: (epsilon, delta)-DP."
    )
    epsilon: float = Field(gt=0, le=50, description="Privacy loss of one noised value.")
    delta: float | None = Field(None, gt=0, lt=0.01, description="gaussian: the delta.")
    lo: float = Field(description="Values below are raised to lo before the noise.")
    hi: float = Field(description="Values above are lowered to hi before the noise.")
    integer: bool = Field(False, description="Integer noise; outputs are whole numbers.")
    round_to: float | None = Field(
        None, gt=0, description="Round outputs to a multiple of this (no privacy cost)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Noise:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError("needs finite bounds with lo < hi")
        if self.mechanism == "gaussian" and self.delta is None:
            raise ValueError("mechanism gaussian needs delta")
        if self.mechanism == "laplace" and self.delta is not None:
            raise ValueError("mechanism laplace takes no delta (it is pure epsilon-DP)")
        if self.integer and (self.lo != int(self.lo) or self.hi != int(self.hi)):
            raise ValueError("integer noise needs whole-number bounds lo and hi")
        if self.integer and self.round_to is not None and self.round_to != int(self.round_to):
            raise ValueError("integer noise needs a whole-number round_to")
        if max(abs(self.lo), abs(self.hi)) >= 2**53:
            raise ValueError("bounds must be below 2**53 in magnitude")
        return self


class RandomizedResponse(_Spec):
    """Local DP on a boolean or a category: k-ary randomized response (raymask.kernels.rr); the
    value is kept with probability e^eps / (e^eps + k - 1), else replaced by another category."""

    technique: Literal["randomized_response"]
    epsilon: float = Field(gt=0, le=50, description="Privacy loss of one randomized value.")
    categories: list[StrictStr] | list[StrictInt] | None = Field(
        None, description="The k categories (strings or integers); none: booleans (k = 2)."
    )

    @field_validator("categories")
    @classmethod
    def _distinct(cls, v: list | None) -> list | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError("needs at least 2 distinct categories")
        return v


DETECT_TYPES = TYPES  # what the detector finds, in its order (raymask.kernels.detect)
DetectType = Literal[(*TYPES, "secret")]  # "secret": every secret type at once


class DetectPattern(BaseModel):
    """A pattern of your own: a regex (Python `re` syntax that RE2 also takes) and an optional
    check of the matched text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = Field(
        description="Type name reported for matches (lower case)."
    )
    regex: str = Field(min_length=1, max_length=1000, description="What to find.")
    validator: Literal["luhn", "mod97", "ipv4"] | None = Field(
        None, description="Keep only matches that pass: luhn, mod97 (IBAN) or ipv4 (octets)."
    )
    confidence: float = Field(0.8, ge=0, le=1, description="Confidence reported for matches.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            rx = re.compile(v)
        except re.error as e:
            raise ValueError(f"does not compile: {e.msg} at position {e.pos}") from None
        if rx.match(""):
            raise ValueError("matches the empty string; it would find a span everywhere")
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            pc.match_substring_regex(pa.array([""]), v)
        except pa.ArrowInvalid:
            raise ValueError("RE2 does not take it (no backreferences or lookarounds)") from None
        return v


class Detect(_Spec):
    """Finds PII and secrets in free text and replaces each span: by `<TYPE>` (or the text in
    `replace`), or by its keyed token (`replace: {email: token}`), so mentions stay joinable
    with the fields tokenized under the same key, encoding, length and prefix."""

    technique: Literal["detect"]
    types: list[DetectType] | None = Field(
        None, min_length=1, description="What to find (secret: every secret type); none: all."
    )
    replace: dict[str, str] = Field(
        default_factory=dict,
        description="Per type: the replacement text, or `token` for a keyed token (default <TYPE>).",
    )
    patterns: list[DetectPattern] = Field(default_factory=list, description="Your own patterns.")
    min_confidence: float = Field(0.0, ge=0, le=1, description="Ignore spans below this.")
    key: (
        Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)] | None
    ) = Field(None, description="Tokens: the key id (as in tokenize).")
    encoding: Literal["hex", "base32", "base64url"] = "base32"
    length: int | None = Field(None, ge=8, description="Tokens: characters kept.")
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_:.-]{0,16}$", description="Tokens: prefix.")

    @model_validator(mode="after")
    def _consistent(self) -> Detect:
        known = set(DETECT_TYPES) | {p.name for p in self.patterns} | {"secret"}
        for t in self.replace:
            if t not in known:
                raise ValueError(f"replace names type {t}, which is neither built in nor a pattern")
        if "token" in self.replace.values() and self.key is None:
            raise ValueError("replace uses token: give the key id (key:)")
        names = [p.name for p in self.patterns]
        if len(set(names)) != len(names) or set(names) & set(DETECT_TYPES):
            raise ValueError("pattern names must be distinct and not a built-in type")
        if self.length is not None and self.length > _TOKEN_CHARS[self.encoding]:
            raise ValueError(
                f"length must be <= {_TOKEN_CHARS[self.encoding]} for encoding {self.encoding}"
            )
        return self


def _shorthand(v: Any) -> Any:
    return {"technique": v} if isinstance(v, str) else v


FieldSpec = Annotated[
    Keep
    | Redact
    | Mask
    | Tokenize
    | Fpe
    | Encrypt
    | Segregate
    | Generalize
    | DateShift
    | Noise
    | RandomizedResponse
    | Detect,  # noqa: UP007
    Field(discriminator="technique"),
    BeforeValidator(_shorthand),
]

FieldPath = Annotated[str, Field(pattern=r"^[^.\s][^\s]*$", max_length=256)]
Name = Annotated[str, Field(pattern=_NAME)]


class Budget(BaseModel):
    """Per-subject privacy allowance for the stream's local-DP fields (noise, randomized_response).

    Each worker keeps, for the subjects it owns, the privacy loss their released records spent
    in the current period. A record's cost is the sum over its noised fields, in every view it is
    released in (roles may compare notes, so views compose). When a subject has not enough left,
    `exhausted` says what happens to its record: `suppress` writes null in the noised fields (no
    cost), `drop` sends it to the dead letters.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(gt=0, le=10_000, description="Allowance per subject and period.")
    delta: float = Field(
        0.0, ge=0, lt=0.01, description="Delta allowance (basic) or target (zcdp)."
    )
    period: Literal["hour", "day", "week", "forever"] = Field(
        "day", description="The allowance renews at each period boundary (UTC, processing time)."
    )
    composition: Literal["basic", "zcdp"] = Field(
        "basic",
        description="basic: epsilons and deltas add up; zcdp: rho adds up (eps^2/2 per pure-DP "
        "value, D^2/2sigma^2 per Gaussian) against the rho that (epsilon, delta) allows.",
    )
    exhausted: Literal["suppress", "drop"] = Field(
        "suppress", description="What happens to a record whose subject has not enough left."
    )
    subject: FieldPath | None = Field(
        None, description="Whose budget: this field (default: the stream key)."
    )
    key: Annotated[KeyId, BeforeValidator(lambda v: _key_id(v) if isinstance(v, str) else v)] = (
        Field(description="Key id that seals the ledger checkpoints (AES-GCM).")
    )

    @model_validator(mode="after")
    def _consistent(self) -> Budget:
        if self.composition == "zcdp" and self.delta <= 0:
            raise ValueError("composition zcdp needs delta > 0 to turn rho into (epsilon, delta)")
        return self


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(v: Any) -> Any:
    """'90s', '1m', '2h', '1d', '250ms' or a number of seconds."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*", v)
        if not m:
            raise ValueError("a duration like 90s, 1m, 2h or 1d")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return v


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]


def iso_seconds(text: str) -> float:
    """Epoch seconds of ISO 8601 text (UTC unless it says otherwise); ValueError if it is not."""
    from datetime import UTC, datetime

    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _instant(v: Any) -> Any:
    """ISO 8601 text, a YAML timestamp or date, or epoch seconds."""
    from datetime import date

    if isinstance(v, date):  # (a datetime is a date too)
        v = v.isoformat()
    if isinstance(v, str):
        try:
            return iso_seconds(v.strip())
        except ValueError:
            raise ValueError("a time like 2026-01-01T00:00:00Z or epoch seconds") from None
    return v


Instant = Annotated[float, BeforeValidator(_instant)]


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Duration = Field(description="Window length (event time).")
    slide: Duration | None = Field(None, description="Hop between windows (none: tumbling).")
    lateness: Duration = Field(0.0, description="How long after its end a window waits.")

    @model_validator(mode="after")
    def _whole_slides(self) -> Window:
        if self.size <= 0:
            raise ValueError("size must be > 0")
        slide = self.slide or self.size
        if not 0 < slide <= self.size or abs(self.size / slide - round(self.size / slide)) > 1e-9:
            raise ValueError("slide must divide size")
        return self


class AggMetric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["count", "sum", "mean", "histogram", "quantiles", "top_k"]
    epsilon: float = Field(gt=0, le=50, description="This metric's share of the window's epsilon.")
    field: FieldPath | None = Field(None, description="The value field (all but count).")
    lo: float = Field(0.0, description="sum, mean, histogram, quantiles: clamp to [lo, hi].")
    hi: float = Field(0.0, description="The upper clamp.")
    bins: int | None = Field(None, ge=1, le=4096, description="histogram: equal-width bins.")
    quantiles: list[float] | None = Field(
        None, min_length=1, max_length=64, description="quantiles: ranks in (0, 1)."
    )
    k: int | None = Field(None, ge=1, le=1000, description="top_k: values shown per group.")

    @model_validator(mode="after")
    def _needs(self) -> AggMetric:
        op = self.op
        if op == "count":
            if self.field is not None:
                raise ValueError("count takes no field")
        elif self.field is None:
            raise ValueError(f"{op} needs a field")
        elif op != "top_k" and not self.lo < self.hi:
            raise ValueError(f"{op} needs bounds lo < hi")
        wants = {"histogram": "bins", "quantiles": "quantiles", "top_k": "k"}
        for o, name in wants.items():
            given = getattr(self, name) is not None
            if given and op != o:
                raise ValueError(f"{name} belongs to {o}, not {op}")
            if not given and op == o:
                raise ValueError(f"{op} needs {name}")
        if self.quantiles is not None and not all(0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return self


class Aggregate(BaseModel):
    """A windowed DP aggregate of a stream (raymask.actors.aggregates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: FieldPath = Field(description="Event time: ISO 8601 text or epoch seconds.")
    window: Window
    group_by: FieldPath = Field(description="The group key field.")
    subject: FieldPath | None = Field(None, description="Whose contribution is bounded (key).")
    max_groups: int = Field(1, ge=1, le=10_000, description="Groups per subject per window.")
    max_rows: int = Field(1, ge=1, le=10_000, description="Rows per subject, group and window.")
    delta: float = Field(1e-6, gt=0, lt=0.01, description="Partition selection's delta.")
    metrics: list[AggMetric] = Field(
        min_length=1, description="count first, then sums, means, histograms, quantiles, top_k."
    )
    scopes: list[str] | None = Field(
        None, description="Accountant scopes charged per window (default: stream:NAME)."
    )

    @model_validator(mode="after")
    def _count_first(self) -> Aggregate:
        if self.metrics[0].op != "count" or any(m.op == "count" for m in self.metrics[1:]):
            raise ValueError("metrics: exactly one count, first (it selects the groups)")
        cats = {m.field for m in self.metrics if m.op == "top_k"}
        nums = {m.field for m in self.metrics if m.op not in ("count", "top_k")}
        if cats & nums:
            raise ValueError(f"field {sorted(cats & nums)[0]} cannot be both top_k and numeric")
        return self


class Continual(BaseModel):
    """A running count or sum released after every step (raymask.actors.continual)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: FieldPath = Field(description="Event time: ISO 8601 text or epoch seconds.")
    step: Duration = Field(description="A release after every step of event time.")
    lateness: Duration = Field(0.0, description="How long after its end a step waits.")
    horizon: int = Field(
        1024, ge=1, le=16_384, description="Steps per counter; each horizon is charged once."
    )
    mechanism: Literal["sqrt", "tree"] = Field(
        "sqrt", description="Square-root factorization (lower error) or binary tree."
    )
    epsilon: float = Field(gt=0, le=50, description="Per horizon.")
    delta: float = Field(1e-6, gt=0, lt=0.01, description="Per horizon.")
    op: Literal["count", "sum"] = "count"
    field: FieldPath | None = Field(None, description="sum: the numeric field.")
    lo: float = Field(0.0, description="sum: values are clamped to [lo, hi].")
    hi: float = Field(0.0, description="sum: upper clamp.")
    subject: FieldPath | None = Field(None, description="Whose rows are bounded (key).")
    max_rows: int = Field(1, ge=1, le=10_000, description="Rows per subject per horizon.")
    scopes: list[str] | None = Field(
        None, description="Accountant scopes charged per horizon (default: stream:NAME)."
    )
    start: Instant | None = Field(
        None,
        description="Public start of the release schedule (ISO 8601 or epoch seconds); without "
        "it the schedule starts at the first row's step, which the output then shows.",
    )

    @model_validator(mode="after")
    def _needs(self) -> Continual:
        if self.step <= 0:
            raise ValueError("step must be > 0")
        if self.op == "sum" and (self.field is None or not self.lo < self.hi):
            raise ValueError("sum needs a field and bounds lo < hi")
        if self.op == "count" and self.field is not None:
            raise ValueError("count takes no field")
        return self


class RevealRule(BaseModel):
    """Who may ask for clear values over HTTP (`POST .../reveal`), and how often."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: list[Name] = Field(min_length=1, description="Roles allowed to reveal.")
    per_minute: int = Field(60, ge=1, le=100_000, description="Values per caller per minute.")


class LeakCheck(BaseModel):
    """Sampled scan of the masked output: a value that is still detectable raises a metric and
    an audit record (stream, field, type, policy version; never the value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample: float = Field(gt=0, le=1, description="Share of output records scanned (0.01 = 1%).")
    types: list[DetectType] | None = Field(None, min_length=1, description="What to look for.")
    ignore_kept: bool = Field(
        True,
        description="Do not report fields the view releases on purpose (keep, generalize: an "
        "IP prefix is still an IP).",
    )


_XML_STEP = r"(?:[A-Za-z_][\w.\-]*:)?[A-Za-z_][\w.\-]*"


class XmlOptions(BaseModel):
    """Where the records of an XML stream are, and the namespaces their path names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record: str = Field(
        pattern=rf"^/?{_XML_STEP}(?:/{_XML_STEP})*$",
        max_length=1024,
        description="Path of the record elements from the root, e.g. "
        "Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf (steps match by local name).",
    )
    namespaces: dict[Name, str] = Field(
        default_factory=dict,
        description="Prefix -> namespace URI for the prefixes the record path uses; the document "
        "must declare each URI.",
    )

    @model_validator(mode="after")
    def _prefixes_declared(self) -> XmlOptions:
        for step in self.record.strip("/").split("/"):
            if ":" in step and step.split(":", 1)[0] not in self.namespaces:
                raise ValueError(f"record: prefix {step.split(':', 1)[0]} is not under namespaces")
        return self


class ProtobufOptions(BaseModel):
    """The message type of a protobuf stream, from a compiled descriptor set or a .proto file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str = Field(
        pattern=r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*$",
        description="Full name of the record message type, e.g. raymask.traffic.Payment.",
    )
    descriptor_set: str | None = Field(
        None,
        description="A FileDescriptorSet file (protoc --include_imports --descriptor_set_out); "
        "a relative path is relative to the policy file.",
    )
    proto: str | None = Field(
        None,
        description="A .proto file, compiled when the job starts (grpcio-tools' protoc); a "
        "relative path is relative to the policy file.",
    )
    include: list[str] = Field(default_factory=list, description="Import folders for `proto`.")

    @model_validator(mode="after")
    def _one_schema(self) -> ProtobufOptions:
        if (self.descriptor_set is None) == (self.proto is None):
            raise ValueError("give exactly one of descriptor_set and proto")
        return self


class Stream(BaseModel):
    """One stream of records: its format, sharding key and per-field techniques."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["ndjson", "csv", "xml", "protobuf"] = Field(
        description="Wire format of records."
    )
    key: FieldPath = Field(description="Path of the sharding key (device, account or user id).")
    unknown_fields: Literal["keep", "drop", "detect"] = Field(
        "keep", description="What happens to fields the policy does not name."
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV delimiter.")
    xml: XmlOptions | None = Field(None, description="XML: the record path and namespaces.")
    protobuf: ProtobufOptions | None = Field(None, description="Protobuf: the message type.")
    fields: dict[FieldPath, FieldSpec] = Field(description="The default (strictest) view.")
    views: dict[Name, dict[FieldPath, FieldSpec]] = Field(
        default_factory=dict, description="Per role: overrides of the default view."
    )
    budget: Budget | None = Field(
        None, description="Per-subject allowance for the noise and randomized_response fields."
    )
    aggregates: dict[Name, Aggregate] = Field(
        default_factory=dict, description="Windowed DP aggregates (raymask aggregate)."
    )
    continual: dict[Name, Continual] = Field(
        default_factory=dict, description="Running DP counts and sums (raymask aggregate)."
    )
    reveal: RevealRule | None = Field(
        None, description="Who may reveal fpe and encrypt fields over HTTP (none: nobody)."
    )
    leak_check: LeakCheck | None = Field(
        None, description="Sampled scan of every output view for values that got through."
    )
    unknown_detect: Detect | None = Field(
        None,
        description="unknown_fields: detect: what to find and how to replace it "
        "(default: every type, replaced by <TYPE>).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Stream:
        both = sorted(set(self.aggregates) & set(self.continual))
        if both:
            raise ValueError(f"{both[0]} is both an aggregate and a continual release")
        if self.unknown_detect is not None and self.unknown_fields != "detect":
            raise ValueError("unknown_detect is used only with unknown_fields: detect")
        for fmt in ("xml", "protobuf"):
            if self.format == fmt and getattr(self, fmt) is None:
                raise ValueError(f"format {fmt} needs its {fmt}: options")
            if self.format != fmt and getattr(self, fmt) is not None:
                raise ValueError(f"{fmt}: options are for format {fmt} only")
        if self.format == "xml":
            return self._consistent_xml()
        paths = sorted(self.fields)
        for a, b in zip(paths, paths[1:], strict=False):
            if b.startswith(a + "."):
                raise ValueError(f"fields {a} and {b} overlap: a field cannot contain another")
        for p in self.fields:
            if self.key.startswith(p + ".") or p.startswith(self.key + "."):
                raise ValueError(f"key {self.key} overlaps field {p}")
        return self._views_name_known_fields()

    def _views_name_known_fields(self) -> Stream:
        for role, overrides in self.views.items():
            for p in overrides:
                if p not in self.fields:
                    raise ValueError(
                        f"view {role} names field {p}, which is not under fields; add it there first"
                    )
        return self

    def _consistent_xml(self) -> Stream:
        step = re.compile(rf"^{_XML_STEP}$")
        every = [self.key, *self.fields]
        for p in every:
            parts = p.split("/")
            ok = all(step.match(x) for x in parts[:-1]) and (
                step.match(parts[-1]) or (parts[-1].startswith("@") and step.match(parts[-1][1:]))
            )
            if not ok:
                raise ValueError(
                    f"field {p}: an XML field is element steps joined by / and may end in @attribute"
                )
        for a in every:
            for b in every:
                if b != a and b.startswith(a + "/") and not b[len(a) + 1 :].startswith("@"):
                    raise ValueError(f"fields {a} and {b} overlap: a field cannot contain another")
        return self._views_name_known_fields()


class Policy(BaseModel):
    """A versioned set of stream policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1, description="Policy version; output batches carry it.")
    description: str = ""
    streams: dict[Name, Stream] = Field(min_length=1)
