"""Keyed tokenization: HMAC-SHA-256 (RFC 2104, FIPS 180-4) as a Numba kernel over Arrow buffers.

Two backends for the SHA-256 compression function, same results: ``openssl`` calls libcrypto's
one-block ``SHA256_Transform`` from the Numba kernel (it uses the CPU's SHA extensions where there
are some; used whenever libcrypto is loadable), and ``numba`` runs the compression in Numba on
32-bit words held in int64 (masked after every add, so Numba never promotes to floats). The key's inner and outer states (after the ipad / opad
block) are computed once per key with `cryptography`-free plain SHA-256 here and reused for every
value, so a value of L bytes costs ceil((L + 9) / 64) + 1 compressions.

Guarantee: bit-exact with Python's `hmac.new(key, value, "sha256")`, checked in
tests/kernels/test_tokenize.py on the RFC 4231 vectors and on random inputs. The same key version
gives the same token for the same value in every stream and every run, so tokens stay joinable.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import as_text, string_array, string_buffers

__all__ = ["BACKENDS", "hmac_sha256", "hmac_states", "tokenize", "encode_digests", "ENCODINGS"]

_K = np.array(
    [
        0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
        0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
        0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
        0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
        0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
        0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
        0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
        0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
    ],
    dtype=np.int64,
)  # fmt: skip
_H0 = np.array(
    [
        0x6A09E667,
        0xBB67AE85,
        0x3C6EF372,
        0xA54FF53A,
        0x510E527F,
        0x9B05688C,
        0x1F83D9AB,
        0x5BE0CD19,
    ],
    dtype=np.int64,
)
_M = 0xFFFFFFFF


@njit(cache=True, inline="always")
def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & 0xFFFFFFFF


@njit(cache=True)
def _compress(state, buf, pos, w, k):
    """One SHA-256 compression of the 64 bytes buf[pos:pos+64] into state (8 words)."""
    for t in range(16):
        j = pos + 4 * t
        w[t] = (
            (np.int64(buf[j]) << 24)
            | (np.int64(buf[j + 1]) << 16)
            | (np.int64(buf[j + 2]) << 8)
            | np.int64(buf[j + 3])
        )
    for t in range(16, 64):
        x = w[t - 15]
        y = w[t - 2]
        s0 = _rotr(x, 7) ^ _rotr(x, 18) ^ (x >> 3)
        s1 = _rotr(y, 17) ^ _rotr(y, 19) ^ (y >> 10)
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & 0xFFFFFFFF
    a = state[0]
    b = state[1]
    c = state[2]
    d = state[3]
    e = state[4]
    f = state[5]
    g = state[6]
    h = state[7]
    for t in range(64):
        s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
        ch = (e & f) ^ ((~e) & 0xFFFFFFFF & g)
        t1 = (h + s1 + ch + k[t] + w[t]) & 0xFFFFFFFF
        s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
        maj = (a & b) ^ (a & c) ^ (b & c)
        t2 = (s0 + maj) & 0xFFFFFFFF
        h = g
        g = f
        f = e
        e = (d + t1) & 0xFFFFFFFF
        d = c
        c = b
        b = a
        a = (t1 + t2) & 0xFFFFFFFF
    state[0] = (state[0] + a) & 0xFFFFFFFF
    state[1] = (state[1] + b) & 0xFFFFFFFF
    state[2] = (state[2] + c) & 0xFFFFFFFF
    state[3] = (state[3] + d) & 0xFFFFFFFF
    state[4] = (state[4] + e) & 0xFFFFFFFF
    state[5] = (state[5] + f) & 0xFFFFFFFF
    state[6] = (state[6] + g) & 0xFFFFFFFF
    state[7] = (state[7] + h) & 0xFFFFFFFF


@njit(cache=True, inline="always")
def _inner_tail(data, s, L, tail):
    """The last one or two blocks of the inner hash (message rest, 0x80, zeros, bit length of
    ipad block + message) in `tail`; returns how many blocks."""
    full = L // 64
    r = L - 64 * full
    for j in range(128):
        tail[j] = 0
    for j in range(r):
        tail[j] = data[s + 64 * full + j]
    tail[r] = 0x80
    nblk = 1 if r + 9 <= 64 else 2
    bits = (64 + L) * 8
    end = 64 * nblk
    for j in range(8):
        tail[end - 1 - j] = (bits >> (8 * j)) & 0xFF
    return nblk


@njit(cache=True, inline="always")
def _outer_block(st, tail):
    """The single block of the outer hash: the 32-byte inner digest, padded (768 bits)."""
    for j in range(128):
        tail[j] = 0
    for j in range(8):
        v = st[j]
        tail[4 * j] = (v >> 24) & 0xFF
        tail[4 * j + 1] = (v >> 16) & 0xFF
        tail[4 * j + 2] = (v >> 8) & 0xFF
        tail[4 * j + 3] = v & 0xFF
    tail[32] = 0x80
    tail[62] = 0x03  # (64 + 32) * 8 = 768 = 0x0300 bits


@njit(cache=True, inline="always")
def _store_digest(st, out, i):
    for j in range(8):
        v = st[j]
        out[i, 4 * j] = (v >> 24) & 0xFF
        out[i, 4 * j + 1] = (v >> 16) & 0xFF
        out[i, 4 * j + 2] = (v >> 8) & 0xFF
        out[i, 4 * j + 3] = v & 0xFF


@njit(cache=True)
def _hmac_kernel(offsets, data, valid, istate, ostate, k):
    n = offsets.shape[0] - 1
    out = np.zeros((n, 32), dtype=np.uint8)
    w = np.empty(64, dtype=np.int64)
    st = np.empty(8, dtype=np.int64)
    tail = np.zeros(128, dtype=np.uint8)
    for i in range(n):
        if not valid[i]:
            continue
        s = offsets[i]
        L = offsets[i + 1] - s
        # inner hash: state after the ipad block, then the message
        for j in range(8):
            st[j] = istate[j]
        for b in range(L // 64):
            _compress(st, data, s + 64 * b, w, k)
        nblk = _inner_tail(data, s, L, tail)
        for b in range(nblk):
            _compress(st, tail, 64 * b, w, k)
        # outer hash: state after the opad block, then the 32-byte inner digest
        _outer_block(st, tail)
        for j in range(8):
            st[j] = ostate[j]
        _compress(st, tail, 0, w, k)
        _store_digest(st, out, i)
    return out


def hmac_states(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """SHA-256 states after the ipad and opad blocks of HMAC with `key` (RFC 2104, section 2)."""
    if len(key) > 64:
        import hashlib

        key = hashlib.sha256(key).digest()
    block = np.zeros(64, dtype=np.uint8)
    block[: len(key)] = np.frombuffer(key, dtype=np.uint8)
    w = np.empty(64, dtype=np.int64)
    states = []
    for pad in (0x36, 0x5C):
        st = _H0.copy()
        _compress(st, block ^ np.uint8(pad), 0, w, _K)
        states.append(st)
    return states[0], states[1]


def _load_transform():
    """OpenSSL's one-block SHA-256 function (uses the CPU's SHA extensions where present), or
    None when no libcrypto with SHA256_Transform is loadable; the pure Numba path is then used."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("RAYMASK_PURE_SHA256") == "1":
        return None
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so"):
        if not name:
            continue
        try:
            fn = ctypes.CDLL(name).SHA256_Transform
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = None
        return fn
    return None


_TRANSFORM = _load_transform()


def _make_ossl_kernel(transform):
    # Not cached on disk: the kernel embeds the function's address, which changes per process.
    @njit(cache=False)
    def kernel(offsets, data, valid, istate, ostate):
        n = offsets.shape[0] - 1
        out = np.zeros((n, 32), dtype=np.uint8)
        ctx = np.zeros(28, dtype=np.uint32)  # SHA256_CTX: h[8] first, host byte order
        tail = np.zeros(128, dtype=np.uint8)
        base = data.ctypes.data
        for i in range(n):
            if not valid[i]:
                continue
            s = offsets[i]
            L = offsets[i + 1] - s
            for j in range(8):
                ctx[j] = istate[j]
            for b in range(L // 64):
                transform(ctx.ctypes.data, base + s + 64 * b)
            nblk = _inner_tail(data, s, L, tail)
            for b in range(nblk):
                transform(ctx.ctypes.data, tail.ctypes.data + 64 * b)
            _outer_block(ctx, tail)
            for j in range(8):
                ctx[j] = ostate[j]
            transform(ctx.ctypes.data, tail.ctypes.data)
            _store_digest(ctx, out, i)
        return out

    return kernel


_ossl_kernel = _make_ossl_kernel(_TRANSFORM) if _TRANSFORM is not None else None

BACKENDS = ("openssl", "numba") if _ossl_kernel is not None else ("numba",)


def _digests(b, key: bytes, backend: str | None) -> np.ndarray:
    istate, ostate = hmac_states(key)
    backend = backend or BACKENDS[0]
    if backend == "openssl":
        if _ossl_kernel is None:
            raise ValueError("the openssl backend is not available here")
        data = b.data if len(b.data) else np.zeros(1, np.uint8)
        return _ossl_kernel(
            b.offsets, data, b.valid, istate.astype(np.uint32), ostate.astype(np.uint32)
        )
    return _hmac_kernel(b.offsets, b.data, b.valid, istate, ostate, _K)


def hmac_sha256(
    values: pa.Array | pa.ChunkedArray, key: bytes, *, backend: str | None = None
) -> np.ndarray:
    """HMAC-SHA-256 of every value's UTF-8 bytes: an (n, 32) uint8 array; null rows are zeros."""
    return _digests(string_buffers(values), key, backend)


_B32 = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)
_B64URL = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8
)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
ENCODINGS = {"hex": 64, "base32": 52, "base64url": 43}  # characters in a full 32-byte digest


@njit(cache=True)
def _radix_encode(digests, bits, alphabet, chars):
    """Big-endian bit stream of each digest cut into `bits`-bit symbols (RFC 4648 order)."""
    n = digests.shape[0]
    out = np.empty((n, chars), dtype=np.uint8)
    mask = (1 << bits) - 1
    for i in range(n):
        acc = 0
        nbits = 0
        c = 0
        for j in range(digests.shape[1]):
            acc = ((acc << 8) | digests[i, j]) & 0xFFFF
            nbits += 8
            while nbits >= bits and c < chars:
                nbits -= bits
                out[i, c] = alphabet[(acc >> nbits) & mask]
                c += 1
        if c < chars:  # final partial symbol, zero-padded on the right
            out[i, c] = alphabet[(acc << (bits - nbits)) & mask]
    return out


def encode_digests(digests: np.ndarray, encoding: str, length: int | None = None) -> np.ndarray:
    """Encode (n, 32) digests as (n, chars) ASCII: hex, base32 (RFC 4648, lower case, no padding)
    or base64url (RFC 4648 section 5, no padding), truncated to `length` characters."""
    if encoding == "hex":
        enc = np.empty((digests.shape[0], 64), dtype=np.uint8)
        enc[:, 0::2] = _HEX[digests >> 4]
        enc[:, 1::2] = _HEX[digests & 0x0F]
    elif encoding == "base32":
        enc = _radix_encode(digests, 5, _B32, 52)
    elif encoding == "base64url":
        enc = _radix_encode(digests, 6, _B64URL, 43)
    else:
        raise ValueError(
            f"unknown token encoding {encoding!r}; expected one of {sorted(ENCODINGS)}"
        )
    return enc if length is None else enc[:, :length]


@njit(cache=True)
def _encode_into(digests, valid, prefix, alphabet, bits, chars):
    """prefix + the first `chars` symbols of each digest's big-endian bit stream, fixed width."""
    n = digests.shape[0]
    width = prefix.shape[0] + chars
    out = np.empty((n, width), dtype=np.uint8)
    mask = (1 << bits) - 1
    for i in range(n):
        for q in range(prefix.shape[0]):
            out[i, q] = prefix[q]
        if not valid[i]:
            for q in range(prefix.shape[0], width):
                out[i, q] = 0
            continue
        c = prefix.shape[0]
        acc = 0
        nbits = 0
        j = 0
        while c < width:
            if nbits < bits:
                if j < 32:
                    acc = ((acc << 8) | digests[i, j]) & 0xFFFF
                    j += 1
                    nbits += 8
                else:  # final partial symbol, zero-padded on the right
                    out[i, c] = alphabet[(acc << (bits - nbits)) & mask]
                    c += 1
                    break
            else:
                nbits -= bits
                out[i, c] = alphabet[(acc >> nbits) & mask]
                c += 1
    return out


_ALPHABET = {"hex": (_HEX, 4), "base32": (_B32, 5), "base64url": (_B64URL, 6)}


def tokenize(
    values: pa.Array | pa.ChunkedArray,
    key: bytes,
    *,
    encoding: str = "base32",
    length: int | None = None,
    prefix: str = "",
    backend: str | None = None,
) -> pa.Array:
    """Tokens `prefix + encode(HMAC-SHA-256(key, value))[:length]`; nulls stay null.

    Fixed-width output, so the result array is assembled without per-value offsets work.
    """
    values = as_text(values)
    if encoding not in _ALPHABET:
        raise ValueError(
            f"unknown token encoding {encoding!r}; expected one of {sorted(ENCODINGS)}"
        )
    b = string_buffers(values)
    n = len(b)
    digests = _digests(b, key, backend)
    alphabet, bits = _ALPHABET[encoding]
    chars = ENCODINGS[encoding] if length is None else min(length, ENCODINGS[encoding])
    pre = np.frombuffer(prefix.encode(), dtype=np.uint8)
    buf = _encode_into(digests, b.valid, pre, alphabet, bits, chars)
    width = buf.shape[1]
    offsets = np.arange(n + 1, dtype=np.int64) * width
    return string_array(offsets, buf.reshape(-1), b.valid, like=values.type)
