"""HMAC-SHA-256 tokenization: bit-exact with Python's hmac module, encodings equal base64's."""

from __future__ import annotations

import base64
import hmac

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels import tokenize as tk

# --- RFC 4231 section 4 test vectors (HMAC-SHA-256 rows), typed from the RFC -----------------

RFC4231 = [
    pytest.param(
        bytes.fromhex("0b" * 20),
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        id="case1-20-byte-key",
    ),
    pytest.param(
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        id="case2-short-key",
    ),
    pytest.param(
        bytes.fromhex("aa" * 20),
        bytes.fromhex("dd" * 50),
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        id="case3-50-byte-binary-data",
    ),
    pytest.param(
        bytes.fromhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
        bytes.fromhex("cd" * 50),
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        id="case4-25-byte-key",
    ),
    pytest.param(
        bytes.fromhex("0c" * 20),
        b"Test With Truncation",
        "a3b6167473100ee06e0c796c2955552b",  # truncated to 128 bits by the RFC
        id="case5-truncated-128",
    ),
    pytest.param(
        bytes.fromhex("aa" * 131),
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        id="case6-key-longer-than-block",
    ),
    pytest.param(
        bytes.fromhex("aa" * 131),
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        id="case7-key-and-data-longer-than-block",
    ),
]


@pytest.mark.parametrize(("key", "data", "expected_hex"), RFC4231)
def test_matches_rfc4231_vectors(key, data, expected_hex):
    # the typed vector agrees with the stdlib (guards against typos in the table) ...
    assert hmac.new(key, data, "sha256").hexdigest().startswith(expected_hex)
    # ... and the kernel agrees with both; binary data (cases 3, 4) goes in as a binary array
    digests = tk.hmac_sha256(pa.array([data], pa.binary()), key)
    assert digests.shape == (1, 32) and digests.dtype == np.uint8
    assert digests[0].tobytes().hex()[: len(expected_hex)] == expected_hex
    assert digests[0].tobytes() == hmac.new(key, data, "sha256").digest()


# --- random inputs, bit-exact with the stdlib ------------------------------------------------

# code point ranges by UTF-8 width; surrogates (U+D800-U+DFFF) are not scalar values
_RANGES = np.array(
    [
        [0x20, 0x7F],
        [0x00, 0x20],
        [0x80, 0x800],
        [0x800, 0xD800],
        [0xE000, 0x10000],
        [0x10000, 0x110000],
    ]
)
_RANGE_P = np.array([0.45, 0.05, 0.15, 0.15, 0.1, 0.1])


def _random_strings(rng: np.random.Generator, n: int, max_bytes: int = 300) -> list[str]:
    """`n` str values of 0..max_bytes UTF-8 bytes each, mixing 1- to 4-byte code points.

    One stream of random code points is cut into values at the code point boundary just below
    each value's random byte budget, so nothing is built per code point in Python.
    """
    # a cut lands up to 3 bytes past a budget (mid code point), so budgets stop 3 short
    budgets = rng.integers(0, max_bytes - 3 + 1, size=n)
    total_cp = int(budgets.sum()) + 4
    which = rng.choice(len(_RANGES), size=total_cp, p=_RANGE_P)
    lo, hi = _RANGES[which, 0], _RANGES[which, 1]
    cps = (lo + (rng.random(total_cp) * (hi - lo)).astype(np.int64)).astype(np.uint32)
    width = np.select([cps < 0x80, cps < 0x800, cps < 0x10000], [1, 2, 3], 4)
    cum_bytes = np.concatenate([[0], np.cumsum(width)])  # bytes before code point i
    # value k spans code points [cut[k], cut[k+1]) with bytes <= its budget
    cut = np.searchsorted(cum_bytes, np.concatenate([[0], np.cumsum(budgets)]), side="right") - 1
    text = cps.astype("<u4").tobytes().decode("utf-32-le")
    return [text[a:b] for a, b in zip(cut[:-1].tolist(), cut[1:].tolist(), strict=True)]


@pytest.fixture(scope="module")
def random_values() -> list[str]:
    rng = np.random.default_rng(4231)
    vals = _random_strings(rng, 100_000)
    # every length across the SHA-256 padding boundaries (55/56 and 119/120 bytes), ASCII only
    vals += ["x" * k for k in range(0, 301)]
    # and some multi-byte values straddling them
    vals += ["é" * k for k in range(25, 65)] + ["😀" * k for k in range(12, 33)]
    return vals


@pytest.mark.parametrize("key_len", [1, 32, 64, 65, 100])  # 64 = block size, 65 = first hashed key
def test_matches_stdlib_hmac_on_random_inputs(random_values, key_len):
    key = bytes(np.random.default_rng(key_len).integers(0, 256, key_len, dtype=np.uint8))
    encoded = [v.encode("utf-8") for v in random_values]
    assert len(random_values) >= 100_000
    assert max(len(b) for b in encoded) <= 300 and any(
        len(b) != len(v) for b, v in zip(encoded, random_values, strict=True)
    )
    digests = tk.hmac_sha256(pa.array(random_values, pa.string()), key)
    expected = np.frombuffer(
        b"".join(hmac.new(key, b, "sha256").digest() for b in encoded), np.uint8
    )
    np.testing.assert_array_equal(digests, expected.reshape(-1, 32))


def test_empty_key_matches_stdlib():
    # HMAC allows an empty key (an all-zero key block)
    values = ["", "a", "x" * 64, "Zoë"]
    got = tk.hmac_sha256(pa.array(values), b"")
    assert [row.tobytes() for row in got] == [
        hmac.new(b"", v.encode(), "sha256").digest() for v in values
    ]


# --- nulls, array types, empties -------------------------------------------------------------

KEY = b"k" * 32


def _hm(v: str) -> bytes:
    return hmac.new(KEY, v.encode(), "sha256").digest()


def test_null_rows_are_zero_digests_and_null_tokens():
    arr = pa.array(["a", None, "", None, "zoë"], pa.string())
    d = tk.hmac_sha256(arr, KEY)
    assert not d[1].any() and not d[3].any()
    assert d[0].tobytes() == _hm("a") and d[2].tobytes() == _hm("") and d[4].tobytes() == _hm("zoë")
    tok = tk.tokenize(arr, KEY)
    assert tok.is_null().to_pylist() == [False, True, False, True, False]


def test_all_null_array_stays_all_null():
    tok = tk.tokenize(pa.array([None, None], pa.string()), KEY, encoding="hex")
    assert tok.null_count == 2 and tok.type == pa.string()


@pytest.mark.parametrize(
    ("make", "out_type"),
    [
        (lambda v: pa.array(v, pa.string()), pa.string()),
        (lambda v: pa.array(v, pa.large_string()), pa.large_string()),
        # several chunks are combined; the result is one array of the chunked array's type
        (
            lambda v: pa.chunked_array(
                [pa.array(v[:2], pa.string()), pa.array(v[2:], pa.string())]
            ),
            pa.string(),
        ),
        (lambda v: pa.chunked_array([pa.array(v, pa.large_string())]), pa.large_string()),
        # a sliced array starts its offsets mid-buffer
        (lambda v: pa.array(["pad", "pad2"] + v, pa.string()).slice(2), pa.string()),
    ],
    ids=["string", "large_string", "chunked", "chunked-large", "sliced"],
)
def test_tokenize_accepts_string_large_string_and_chunked(make, out_type):
    values = ["alice", None, "", "Łukasz", "x" * 200]
    tok = tk.tokenize(make(values), KEY, encoding="hex")
    assert tok.type == out_type
    expected = [None if v is None else _hm(v).hex() for v in values]
    assert tok.to_pylist() == expected


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_empty_array_gives_empty_result(typ):
    assert tk.hmac_sha256(pa.array([], typ), KEY).shape == (0, 32)
    tok = tk.tokenize(pa.array([], typ), KEY, prefix="t_")
    assert len(tok) == 0 and tok.type == typ
    assert len(tk.tokenize(pa.chunked_array([], typ), KEY)) == 0


def test_empty_string_value_is_hashed_like_empty_bytes():
    tok = tk.tokenize(pa.array([""], pa.string()), KEY, encoding="hex")
    assert tok.to_pylist() == [hmac.new(KEY, b"", "sha256").hexdigest()]


# --- encodings -------------------------------------------------------------------------------


def _b32(d: bytes) -> str:
    return base64.b32encode(d).decode().lower().rstrip("=")


def _b64url(d: bytes) -> str:
    return base64.urlsafe_b64encode(d).decode().rstrip("=")


ORACLES = {"hex": bytes.hex, "base32": _b32, "base64url": _b64url}


@pytest.mark.parametrize("encoding", sorted(ORACLES))
def test_encode_digests_equals_base64_module(encoding):
    rng = np.random.default_rng(7)
    digests = rng.integers(0, 256, size=(2000, 32), dtype=np.uint8)
    # edge digests: all zero bits and all one bits (every symbol at the alphabet's ends)
    digests[0] = 0
    digests[1] = 255
    enc = tk.encode_digests(digests, encoding)
    assert enc.shape == (2000, tk.ENCODINGS[encoding]) and enc.dtype == np.uint8
    got = [row.tobytes().decode("ascii") for row in enc]
    assert got == [ORACLES[encoding](row.tobytes()) for row in digests]


@pytest.mark.parametrize("encoding", sorted(ORACLES))
@pytest.mark.parametrize("length", [1, 8, 16, 43])
def test_encode_digests_truncates_to_length(encoding, length):
    digests = np.random.default_rng(length).integers(0, 256, size=(50, 32), dtype=np.uint8)
    full = tk.encode_digests(digests, encoding)
    short = tk.encode_digests(digests, encoding, length)
    assert short.shape == (50, length)
    np.testing.assert_array_equal(short, full[:, :length])


def test_encode_digests_rejects_unknown_encoding():
    with pytest.raises(ValueError, match="unknown token encoding"):
        tk.encode_digests(np.zeros((1, 32), np.uint8), "base58")


@pytest.mark.parametrize("encoding", sorted(ORACLES))
@pytest.mark.parametrize("prefix", ["", "tok_", "ü:"])  # a multi-byte prefix is written as UTF-8
@pytest.mark.parametrize("length", [None, 12])
def test_tokenize_is_prefix_plus_truncated_encoding(encoding, prefix, length):
    values = ["alice@example.com", "bob", "", "Zoë Łukasz 😀", None]
    for typ in (pa.string(), pa.large_string()):
        tok = tk.tokenize(
            pa.array(values, typ), KEY, encoding=encoding, length=length, prefix=prefix
        )
        assert tok.type == typ
        expected = [
            None if v is None else prefix + ORACLES[encoding](_hm(v))[:length] for v in values
        ]
        assert tok.to_pylist() == expected


# --- joinability -----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=30))
def test_same_key_and_value_give_same_token_across_calls(values):
    first = tk.tokenize(pa.array(values, pa.string()), KEY).to_pylist()
    # a separate call on the values in another order, in another array type
    rev = tk.tokenize(pa.array(values[::-1], pa.large_string()), KEY).to_pylist()
    assert first == rev[::-1]
    by_value = dict(zip(values, first, strict=True))
    assert len(set(by_value.values())) == len(by_value)  # distinct values, distinct tokens


def test_different_keys_give_different_tokens():
    values = pa.array(["alice", "bob", "", "Zoë"], pa.string())
    a = tk.tokenize(values, b"key-one", encoding="hex").to_pylist()
    b = tk.tokenize(values, b"key-two", encoding="hex").to_pylist()
    assert all(x != y for x, y in zip(a, b, strict=True))
    # a key and the same key zero-padded to the block size are the same HMAC key (RFC 2104);
    # that is HMAC's definition, not the kernel's: the stdlib agrees
    padded = tk.tokenize(values, b"key-one" + b"\0" * 57, encoding="hex").to_pylist()
    assert (
        padded
        == a
        == [
            hmac.new(b"key-one" + b"\0" * 57, v.encode(), "sha256").hexdigest()
            for v in values.to_pylist()
        ]
    )


@pytest.mark.parametrize("backend", tk.BACKENDS)
def test_every_backend_matches_stdlib_hmac(backend):
    """The OpenSSL block-function backend and the pure-Numba one give the same digests."""
    import random

    rng = random.Random(99)
    vals = [
        "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FF), 0x1F680]))
            for _ in range(rng.randint(0, 150))
        )
        for _ in range(20_000)
    ]
    vals[3] = None
    for key in (b"k", b"x" * 64, b"y" * 100):
        d = tk.hmac_sha256(pa.array(vals), key, backend=backend)
        for i, v in enumerate(vals):
            if v is not None:
                assert bytes(d[i]) == hmac.digest(key, v.encode(), "sha256")
        t = tk.tokenize(
            pa.array(vals), key, encoding="base64url", length=20, prefix="p_", backend=backend
        )
        assert (
            t[0].as_py()
            == "p_"
            + base64.urlsafe_b64encode(hmac.digest(key, vals[0].encode(), "sha256")).decode()[:20]
        )
