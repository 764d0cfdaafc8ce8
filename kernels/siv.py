"""Deterministic, reversible encryption: AES-SIV (RFC 5297), batched over a whole column.

`cryptography` has AES-SIV, but one call per value. Here the two AES passes of SIV are batched
across the column: the S2V pass is AES-CMAC (RFC 4493) run block index by block index over all
values at once (one AES-ECB call per index), and the CTR pass builds every counter block of every
value and enciphers them in one AES-ECB call. Numba builds the blocks; `cryptography` does AES.

Output text: ``<prefix>v<version>.`` then base64url (no padding) of V || C, where V is the
16-byte synthetic IV. Same key, same associated data, same value: same ciphertext (so encrypted
fields stay joinable), and decryption checks V, so a tampered or foreign value is refused.

Guarantee: byte-identical to ``cryptography``'s ``AESSIV(key).encrypt(value, [ad])`` (tests on the
RFC 5297 vector A.1 and random values).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numba import njit

from raymask.kernels._arrow import as_text, string_array, string_buffers

__all__ = ["ERRORS", "siv_encrypt", "siv_decrypt", "encrypt_column", "decrypt_column"]

E_FORMAT, E_AUTH, E_VERSION, E_UTF8 = 1, 2, 3, 4
ERRORS = {
    E_FORMAT: "not an encrypted value (expected prefix, version and base64url text)",
    E_AUTH: "does not decrypt: wrong key, wrong field, or the value was altered",
    E_VERSION: "encrypted under a key version the keyring does not have",
    E_UTF8: "decrypted bytes are not UTF-8 text",
}


class _Ecb:
    def __init__(self, key: bytes) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        if n == 0:
            return np.zeros((0, 16), np.uint8)
        out = bytearray(n * 16 + 15)
        m = self._enc.update_into(np.ascontiguousarray(blocks).reshape(-1).data, out)
        return np.frombuffer(out, np.uint8, count=m).reshape(n, 16).copy()


def _dbl(block: np.ndarray) -> np.ndarray:
    """Doubling in GF(2^128) (RFC 5297 section 2.3), for one 16-byte block."""
    v = int.from_bytes(block.tobytes(), "big")
    v = ((v << 1) ^ (0x87 if v >> 127 else 0)) & ((1 << 128) - 1)
    return np.frombuffer(v.to_bytes(16, "big"), np.uint8).copy()


def _cmac_subkeys(ecb: _Ecb) -> tuple[np.ndarray, np.ndarray]:
    L = ecb(np.zeros((1, 16), np.uint8))[0]
    k1 = _dbl(L)
    return k1, _dbl(k1)


def _cmac_one(ecb: _Ecb, msg: bytes, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """AES-CMAC of one message (used for the constant parts of S2V)."""
    n = max(1, -(-len(msg) // 16))
    x = np.zeros(16, np.uint8)
    for j in range(n):
        blk = np.zeros(16, np.uint8)
        part = np.frombuffer(msg[16 * j : 16 * j + 16], np.uint8)
        blk[: len(part)] = part
        if j == n - 1:
            if len(msg) > 0 and len(msg) % 16 == 0:
                blk ^= k1
            else:
                blk[len(part)] = 0x80
                blk ^= k2
        x = ecb((x ^ blk).reshape(1, 16))[0]
    return x


@njit(cache=True)
def _s2v_last(offsets, data, rows, D, dblD):
    """T for each row (RFC 5297 S2V, last step): P xorend D if len >= 16, else dbl(D) xor pad(P).
    Returns (T bytes flat, T offsets)."""
    n = rows.shape[0]
    toff = np.zeros(n + 1, np.int64)
    for k in range(n):
        i = rows[k]
        ln = offsets[i + 1] - offsets[i]
        toff[k + 1] = toff[k] + (ln if ln >= 16 else 16)
    t = np.zeros(toff[n], np.uint8)
    for k in range(n):
        i = rows[k]
        s = offsets[i]
        ln = offsets[i + 1] - s
        o = toff[k]
        if ln >= 16:
            for j in range(ln):
                t[o + j] = data[s + j]
            for j in range(16):
                t[o + ln - 16 + j] ^= D[j]
        else:
            for j in range(ln):
                t[o + j] = data[s + j]
            t[o + ln] = 0x80
            for j in range(16):
                t[o + j] ^= dblD[j]
    return t, toff


@njit(cache=True)
def _cmac_blocks(t, toff, j, k1, k2, x):
    """Block j of every message that has one, xored into its running CBC-MAC state x, with the
    CMAC subkey folded into each message's last block. Returns (rows with a block j, blocks)."""
    n = toff.shape[0] - 1
    cnt = 0
    for k in range(n):
        ln = toff[k + 1] - toff[k]
        nb = max(1, (ln + 15) // 16)
        if j < nb:
            cnt += 1
    rows = np.empty(cnt, np.int64)
    blocks = np.zeros((cnt, 16), np.uint8)
    c = 0
    for k in range(n):
        s = toff[k]
        ln = toff[k + 1] - s
        nb = max(1, (ln + 15) // 16)
        if j >= nb:
            continue
        rows[c] = k
        take = min(16, ln - 16 * j)
        for q in range(take):
            blocks[c, q] = t[s + 16 * j + q]
        if j == nb - 1:
            if ln > 0 and ln % 16 == 0:
                for q in range(16):
                    blocks[c, q] ^= k1[q]
            else:
                blocks[c, take] = 0x80
                for q in range(16):
                    blocks[c, q] ^= k2[q]
        for q in range(16):
            blocks[c, q] ^= x[k, q]
        c += 1
    return rows, blocks


@njit(cache=True)
def _ctr_blocks(V, lens):
    """All counter blocks Q + j (Q = V with bits 63 and 31 cleared), j < ceil(len / 16)."""
    n = V.shape[0]
    total = 0
    for k in range(n):
        total += (lens[k] + 15) // 16
    ctr = np.zeros((total, 16), np.uint8)
    c = 0
    for k in range(n):
        nb = (lens[k] + 15) // 16
        hi = np.uint64(0)
        lo = np.uint64(0)
        for q in range(8):
            hi = (hi << np.uint64(8)) | np.uint64(V[k, q])
            lo = (lo << np.uint64(8)) | np.uint64(V[k, 8 + q])
        lo &= np.uint64(0x7FFFFFFF7FFFFFFF)  # clear bits 63 and 31 (RFC 5297 section 2.5)
        for j in range(nb):
            l2 = lo + np.uint64(j)
            h2 = hi + (np.uint64(1) if l2 < lo else np.uint64(0))
            for q in range(8):
                ctr[c, 7 - q] = (h2 >> np.uint64(8 * q)) & np.uint64(0xFF)
                ctr[c, 15 - q] = (l2 >> np.uint64(8 * q)) & np.uint64(0xFF)
            c += 1
    return ctr


@njit(cache=True)
def _xor_stream(offsets, data, rows, stream, out, out_off):
    c = 0
    for k in range(rows.shape[0]):
        i = rows[k]
        s = offsets[i]
        ln = offsets[i + 1] - s
        for j in range(ln):
            out[out_off[k] + j] = data[s + j] ^ stream[c + j // 16, j % 16]
        c += (ln + 15) // 16


class _Siv:
    def __init__(self, key: bytes, ad: bytes | None) -> None:
        if len(key) not in (32, 48, 64):
            raise ValueError("AES-SIV keys are 32, 48 or 64 bytes")
        half = len(key) // 2
        self.mac = _Ecb(key[:half])
        self.ctr = _Ecb(key[half:])
        self.k1, self.k2 = _cmac_subkeys(self.mac)
        d = _cmac_one(self.mac, b"\0" * 16, self.k1, self.k2)
        if ad is not None:
            d = _dbl(d) ^ _cmac_one(self.mac, ad, self.k1, self.k2)
        self.D = d
        self.dblD = _dbl(d)

    def s2v(self, offsets: np.ndarray, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
        t, toff = _s2v_last(offsets, data, rows, self.D, self.dblD)
        n = len(rows)
        x = np.zeros((n, 16), np.uint8)
        nblocks = np.maximum(1, (np.diff(toff) + 15) // 16)
        for j in range(int(nblocks.max()) if n else 0):
            idx, blocks = _cmac_blocks(t, toff, j, self.k1, self.k2, x)
            x[idx] = self.mac(blocks)
        return x

    def ctr_xor(
        self, V: np.ndarray, offsets: np.ndarray, data: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        lens = (offsets[rows + 1] - offsets[rows]).astype(np.int64)
        stream = self.ctr(_ctr_blocks(V, lens))
        out_off = np.zeros(len(rows) + 1, np.int64)
        out_off[1:] = np.cumsum(lens)
        out = np.zeros(int(out_off[-1]), np.uint8)
        _xor_stream(offsets, data, rows, stream, out, out_off)
        return out, out_off


def siv_encrypt(
    values: pa.Array | pa.ChunkedArray, key: bytes, ad: bytes | None = None
) -> pa.Array:
    """V || C of every value (binary; nulls stay null), as AESSIV(key).encrypt(v, [ad])."""
    b = string_buffers(values)
    rows = np.flatnonzero(b.valid)
    siv = _Siv(key, ad)
    V = siv.s2v(b.offsets, b.data, rows)
    C, coff = siv.ctr_xor(V, b.offsets, b.data, rows)
    n = len(b)
    lens = np.zeros(n, np.int64)
    lens[rows] = np.diff(coff) + 16
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum(lens)
    out = np.zeros(int(off[-1]), np.uint8)
    _place(out, off, rows, V, C, coff)
    return string_array(off, out, b.valid, binary=True)


@njit(cache=True)
def _place(out, off, rows, V, C, coff):
    for k in range(rows.shape[0]):
        o = off[rows[k]]
        for q in range(16):
            out[o + q] = V[k, q]
        for q in range(coff[k + 1] - coff[k]):
            out[o + 16 + q] = C[coff[k] + q]


def siv_decrypt(
    blobs: pa.Array, key: bytes, ad: bytes | None = None
) -> tuple[pa.Array, np.ndarray]:
    """Inverse of siv_encrypt on binary V || C values; (plaintext binary, error codes)."""
    b = string_buffers(blobs)
    n = len(b)
    err = np.zeros(n, np.int8)
    lens = np.diff(b.offsets)
    err[b.valid & (lens < 16)] = E_FORMAT
    rows = np.flatnonzero(b.valid & (err == 0))
    V = np.zeros((len(rows), 16), np.uint8)
    if len(rows):
        V = b.data[b.offsets[rows][:, None] + np.arange(16)[None, :]]
    siv = _Siv(key, ad)
    prow = np.arange(len(rows), dtype=np.int64)
    pairs = np.empty(len(rows) + 1, np.int64)
    # gather ciphertexts into one contiguous buffer so the shared helpers apply
    clen = lens[rows] - 16
    pairs[0] = 0
    pairs[1:] = np.cumsum(clen)
    cbuf = np.zeros(int(pairs[-1]), np.uint8)
    if len(rows):
        _gather(b.data, b.offsets, rows, 16, cbuf, pairs)
    P, poff = siv.ctr_xor(V, pairs, cbuf, prow)
    V2 = siv.s2v(poff, P, prow)
    bad = np.any(V2 != V, axis=1)
    err[rows[bad]] = E_AUTH
    ok = b.valid & (err == 0)
    plen = np.zeros(n, np.int64)
    plen[rows] = np.diff(poff)
    plen[~ok] = 0
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum(plen)
    out = np.zeros(int(off[-1]), np.uint8)
    good = np.flatnonzero(ok[rows])
    if len(good):
        _gather(P, poff, good, 0, out, np.r_[0, np.cumsum(plen[rows[good]])])
    return string_array(off, out, ok, binary=True), err


@njit(cache=True)
def _gather(data, offsets, rows, skip, out, out_off):
    for k in range(rows.shape[0]):
        i = rows[k]
        s = offsets[i] + skip
        ln = offsets[i + 1] - s
        for q in range(ln):
            out[out_off[k] + q] = data[s + q]


# ------------------------------------------------------------------ text form

_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
_B64_INV = np.full(256, -1, np.int64)
_B64_INV[_B64] = np.arange(64)


@njit(cache=True)
def _b64_encode(offsets, data, valid, prefix, alphabet):
    n = offsets.shape[0] - 1
    off = np.zeros(n + 1, np.int64)
    for i in range(n):
        ln = offsets[i + 1] - offsets[i]
        off[i + 1] = off[i] + ((prefix.shape[0] + (ln * 4 + 2) // 3) if valid[i] else 0)
    out = np.zeros(off[n], np.uint8)
    for i in range(n):
        if not valid[i]:
            continue
        o = off[i]
        for q in range(prefix.shape[0]):
            out[o + q] = prefix[q]
        o += prefix.shape[0]
        s = offsets[i]
        ln = offsets[i + 1] - s
        acc = 0
        bits = 0
        for q in range(ln):
            acc = ((acc << 8) | data[s + q]) & 0xFFFFFF
            bits += 8
            while bits >= 6:
                bits -= 6
                out[o] = alphabet[(acc >> bits) & 63]
                o += 1
        if bits > 0:
            out[o] = alphabet[(acc << (6 - bits)) & 63]
    return off, out


@njit(cache=True)
def _b64_decode(offsets, data, valid, plen, inv):
    n = offsets.shape[0] - 1
    err = np.zeros(n, np.int8)
    off = np.zeros(n + 1, np.int64)
    for i in range(n):
        ln = offsets[i + 1] - offsets[i] - plen
        if not valid[i] or ln < 0 or ln % 4 == 1:
            if valid[i]:
                err[i] = 1
            off[i + 1] = off[i]
            continue
        off[i + 1] = off[i] + (ln * 3) // 4
    out = np.zeros(off[n], np.uint8)
    for i in range(n):
        if not valid[i] or err[i]:
            continue
        o = off[i]
        acc = 0
        bits = 0
        for q in range(offsets[i] + plen, offsets[i + 1]):
            x = inv[data[q]]
            if x < 0:
                err[i] = 1
                break
            acc = ((acc << 6) | x) & 0xFFFFFF
            bits += 6
            if bits >= 8:
                bits -= 8
                out[o] = (acc >> bits) & 0xFF
                o += 1
    return off, out, err


def _prefix(prefix: str, version: int) -> bytes:
    return f"{prefix}v{version}.".encode()


def encrypt_column(
    values: pa.Array | pa.ChunkedArray,
    key: bytes,
    version: int,
    *,
    prefix: str = "",
    ad: bytes | None = None,
) -> pa.Array:
    """Text form: ``<prefix>v<version>.<base64url(V || C)>``; nulls stay null."""
    values = as_text(values)
    blobs = siv_encrypt(values, key, ad)
    b = string_buffers(blobs)
    off, out = _b64_encode(
        b.offsets, b.data, b.valid, np.frombuffer(_prefix(prefix, version), np.uint8), _B64
    )
    return string_array(off, out, b.valid, like=values.type)


def decrypt_column(
    values: pa.Array | pa.ChunkedArray,
    keys: dict[int, bytes],
    *,
    prefix: str = "",
    ad: bytes | None = None,
) -> tuple[pa.Array, np.ndarray]:
    """Decrypt text made by encrypt_column under any key version in `keys`; (text, errors)."""
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    err = np.zeros(n, np.int8)
    outs: list[tuple[np.ndarray, pa.Array]] = []
    valid = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), np.bool_)
    matched = np.zeros(n, np.bool_)
    for version, key in sorted(keys.items()):
        pre = _prefix(prefix, version).decode()
        has = np.asarray(
            pc.starts_with(values, pre).fill_null(False).to_numpy(zero_copy_only=False), np.bool_
        )
        rows = np.flatnonzero(has & valid)
        if not len(rows):
            continue
        matched[rows] = True
        sub = values.take(pa.array(rows))
        b = string_buffers(sub)
        off, raw, derr = _b64_decode(b.offsets, b.data, b.valid, len(pre), _B64_INV)
        blobs = string_array(off, raw, b.valid & (derr == 0), binary=True)
        plain, perr = siv_decrypt(blobs, key, ad)
        e = np.where(derr != 0, E_FORMAT, perr)
        err[rows] = e
        outs.append((rows, plain))
    err[valid & ~matched] = E_FORMAT
    # versions present in the text that the keyring lacks are reported as such
    unmatched = np.flatnonzero(valid & ~matched)
    if len(unmatched):
        looks = np.asarray(
            pc.match_substring_regex(values.take(pa.array(unmatched)), f"^{prefix}v[0-9]+\\.")
            .fill_null(False)
            .to_numpy(zero_copy_only=False),
            np.bool_,
        )
        err[unmatched[looks]] = E_VERSION
    result = pa.nulls(n, pa.large_binary())
    if outs:
        rows_all = np.concatenate([r for r, _ in outs])
        vals_all = pa.concat_arrays([p.cast(pa.large_binary()) for _, p in outs])
        order = np.empty(n, np.int64)
        order[:] = -1
        order[rows_all] = np.arange(len(rows_all))
        idx = pa.array(np.where(order >= 0, order, 0))
        result = pc.if_else(
            pa.array(order >= 0), vals_all.take(idx), pa.scalar(None, pa.large_binary())
        )
    ok = valid & (err == 0)
    result = pc.if_else(pa.array(ok), result, pa.scalar(None, pa.large_binary()))
    try:
        text = result.cast(pa.large_string())
    except pa.ArrowInvalid:
        return pa.nulls(n, pa.large_string()), np.where(ok, E_UTF8, err).astype(np.int8)
    return text, err
