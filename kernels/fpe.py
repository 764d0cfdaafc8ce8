"""Format-preserving encryption: FF1 and FF3-1 (NIST SP 800-38G, and Rev. 1 for FF3-1), batched.

Both are Feistel networks whose round function is AES. Instead of one AES call per value per
round, every round makes one AES-ECB call (``cryptography``, ``update_into``) over the blocks of
all values of the batch that share a numeral length, and Numba does the numeral arithmetic:

- FF1 (the default; 10 rounds): the round function is a CBC-MAC of P || Q, where P depends only
  on (radix, n, tweak length) and is enciphered once per group; each Q block costs one batched
  ECB call. NUM_radix(B) is built as a little-endian multi-limb integer; c = (NUM(A) + y) mod
  radix^m is computed as base-radix digit addition of A and the m low base-radix digits of y,
  which needs no big-integer addition.
- FF3-1 (compatibility; 8 rounds, 56-bit tweak): one ECB block per value per round, with the
  byte reversals of the standard. FF3 (64-bit tweak) was broken in 2017 (Durak & Vaudenay);
  FF3-1 is its patched form; prefer FF1.

Guarantees: bit-exact with the NIST SP 800-38G sample vectors and with the ``libffx`` (FF1) and
``ff3`` (FF3-1) packages (tests/kernels/test_fpe.py). Domain: radix^n >= 1,000,000 (Rev. 1);
FF3-1 also n <= 2 * floor(log_radix(2^96)). Values outside the domain get an error code.

String level: characters of the alphabet form the numeral string; every other character is a
separator that stays in place (``4111-1111-1111-1111`` keeps its dashes). Options keep the last
k numerals in clear and, for card numbers, keep the whole number Luhn-valid: all encrypted
numerals but the last are enciphered, and the last is set to the digit that makes the number
pass Luhn. Given the others, exactly one digit does (its share of the Luhn sum is a bijection of
0-9), so this is a permutation of the Luhn-valid numbers (decryption deciphers the others and
derives the digit again) at the cost of one encryption per value; cycle walking (encrypt again
until the number passes, Black and Rogaway 2002) gives the same kind of permutation but costs
ten encryptions per value on average, and a batch needs as many steps as its longest walk.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numba import njit

from raymask.kernels._arrow import as_text, string_array, string_buffers

__all__ = [
    "ALPHABETS",
    "ERRORS",
    "ff1_digits",
    "ff3_1_digits",
    "fpe_encrypt",
    "fpe_decrypt",
]

ALPHABETS = {
    10: "0123456789",
    26: "abcdefghijklmnopqrstuvwxyz",
    36: "0123456789abcdefghijklmnopqrstuvwxyz",
    62: "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
}

E_SHORT, E_LONG, E_LUHN = 1, 2, 3
ERRORS = {
    E_SHORT: "too few characters of the alphabet for format-preserving encryption (domain < 1,000,000)",
    E_LONG: "too many characters of the alphabet for format-preserving encryption",
    E_LUHN: "not a card number that can be made Luhn-valid",
}
MIN_DOMAIN = 1_000_000
MAX_NUMERALS = 128  # FF1 limit chosen here: keeps every big integer within 32 limbs


class _Ecb:
    """AES-ECB over many blocks at once, into a preallocated buffer."""

    def __init__(self, key: bytes) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        out = bytearray(n * 16 + 15)
        m = self._enc.update_into(np.ascontiguousarray(blocks).reshape(-1).data, out)
        return np.frombuffer(out, np.uint8, count=m).reshape(n, 16)

    def into(self, blocks: np.ndarray, out: bytearray) -> None:
        """Encipher contiguous (n, 16) `blocks` into `out` (n * 16 + 15 bytes, reused)."""
        self._enc.update_into(blocks.reshape(-1).data, out)


_ECBS = threading.local()  # per thread: an encryptor context is not shared between threads


def _ecb_for(key: bytes) -> _Ecb:
    """This thread's ECB encryptor of `key`, made once (ECB keeps no state between calls of
    whole blocks, so one context serves every batch). Up to 64 keys are kept per thread."""
    cache = getattr(_ECBS, "cache", None)
    if cache is None:
        cache = _ECBS.cache = {}
    ecb = cache.get(key)
    if ecb is None:
        if len(cache) >= 64:
            cache.clear()
        ecb = cache[key] = _Ecb(key)
    return ecb


# ------------------------------------------------------------------ big-integer helpers (Numba)


@njit(cache=True, inline="always")
def _limbs_mul_add(limbs, nl, mul, add):
    """limbs = limbs * mul + add (little-endian base 2^32); returns the new limb count."""
    carry = np.int64(add)
    for j in range(nl):
        v = limbs[j] * mul + carry
        limbs[j] = v & 0xFFFFFFFF
        carry = v >> 32
    while carry:
        limbs[nl] = carry & 0xFFFFFFFF
        carry >>= 32
        nl += 1
    return nl


@njit(cache=True, inline="always")
def _limbs_divmod_small(limbs, nl, d):
    """limbs //= d in place; returns (remainder, new limb count)."""
    rem = 0
    for j in range(nl - 1, -1, -1):
        cur = (rem << 32) | limbs[j]
        limbs[j] = cur // d
        rem = cur % d
    while nl > 0 and limbs[nl - 1] == 0:
        nl -= 1
    return rem, nl


@njit(cache=True)
def _ff1_q(B, radix, tweak, tlen, qlen, b, rnd, y0, small):
    """Q = T || 0^pad || [rnd] || [NUM_radix(B)]^b for every row (B: (N, v) digits, most
    significant first; tweak (N, tlen)), with Y0 = CIPH(P) already xored into the first block,
    so the first AES input of the CBC-MAC is ready. `small`: NUM(B) fits in 64 bits."""
    n = B.shape[0]
    v = B.shape[1]
    q = np.zeros((n, qlen), np.uint8)
    limbs = np.zeros(40, np.int64)
    for i in range(n):
        for j in range(tlen):
            q[i, j] = tweak[i, j]
        q[i, qlen - b - 1] = rnd
        if small:
            x = np.uint64(0)
            for j in range(v):
                x = x * np.uint64(radix) + np.uint64(B[i, j])
            for k in range(b):
                q[i, qlen - 1 - k] = (
                    np.uint8((x >> np.uint64(8 * k)) & np.uint64(0xFF)) if k < 8 else 0
                )
        else:
            nl = 0
            for j in range(v):
                nl = _limbs_mul_add(limbs, nl, radix, np.int64(B[i, j]))
            for k in range(b):  # the integer, big-endian, in the last b bytes
                limb = k // 4
                q[i, qlen - 1 - k] = (limbs[limb] >> (8 * (k % 4))) & 0xFF if limb < nl else 0
        for j in range(16):
            q[i, j] ^= y0[j]
    return q


@njit(cache=True)
def _add_y_digits(X, S, d, radix, m, sign, out):
    """out[i] = STR_m(NUM(X[i]) + sign * NUM(S[i, :d]) mod radix^m), digits most significant
    first. Works digit-wise: the m low base-radix digits of y, added to (or subtracted from) X."""
    n = X.shape[0]
    limbs = np.zeros(40, np.int64)
    yd = np.zeros(m, np.int64)
    for i in range(n):
        nl = 0
        for k in range(d):
            nl = _limbs_mul_add(limbs, nl, 256, np.int64(S[i, k]))
        for k in range(m):  # yd[k]: k-th least significant digit of y
            r, nl = _limbs_divmod_small(limbs, nl, radix)
            yd[k] = r
        carry = 0
        for k in range(m):
            pos = m - 1 - k
            if sign > 0:
                t = X[i, pos] + yd[k] + carry
                carry = 1 if t >= radix else 0
                out[i, pos] = t - radix if t >= radix else t
            else:
                t = X[i, pos] - yd[k] - carry
                carry = 1 if t < 0 else 0
                out[i, pos] = t + radix if t < 0 else t


@njit(cache=True)
def _add_y_fast(X, S, d, radix, m, M, sign, out, table, k):
    """_add_y_digits when M = radix^m < 2^56: y mod M from the bytes of S with 64-bit
    arithmetic, then STR_m by k digits at a time from a table of radix^k entries."""
    n = X.shape[0]
    Mu = np.uint64(M)
    block = np.uint64(radix**k)
    for i in range(n):
        r = np.uint64(0)
        for q in range(d):
            if r >= np.uint64(1 << 56):  # keep r << 8 within 64 bits (M < 2^56 here)
                r = r % Mu
            r = (r << np.uint64(8)) | np.uint64(S[i, q])
        r = r % Mu
        a = np.uint64(0)
        for j in range(m):
            a = a * np.uint64(radix) + np.uint64(X[i, j])
        c = _add_mod(a, r, Mu, sign)
        pos = m
        while pos > 0:
            take = k if pos >= k else pos
            chunk = c % block if take == k else c
            c = c // block
            base = np.int64(chunk) * k
            for t in range(take):
                out[i, pos - take + t] = table[base + (k - take) + t]
            pos -= take


def _digit_table(radix: int) -> tuple[np.ndarray, int]:
    k = 1
    while radix ** (k + 1) <= 65536:
        k += 1
    count = radix**k
    vals = np.arange(count, dtype=np.int64)
    table = np.empty((count, k), np.int64)
    for j in range(k - 1, -1, -1):
        table[:, j] = vals % radix
        vals //= radix
    return table.reshape(-1), k


_TABLES: dict[int, tuple[np.ndarray, int]] = {}


def _add_y(
    X: np.ndarray, S: np.ndarray, d: int, radix: int, m: int, sign: int, out: np.ndarray
) -> None:
    M = radix**m
    if M < 2**56:
        if radix not in _TABLES:
            _TABLES[radix] = _digit_table(radix)
        table, k = _TABLES[radix]
        _add_y_fast(X, S, d, radix, m, M, sign, out, table, k)
    else:
        _add_y_digits(X, S, d, radix, m, sign, out)


# ------------------------------------------------------------------ integer-state fast path
#
# While radix^v < 2^56, each half fits a uint64 and the round output c *is* NUM_radix of the new
# half (FF1: NUM(STR_m(c)) = c; FF3-1: NUM(REV(REV(STR_m(c)))) = c), so the Feistel state stays
# two integers per value: no digit conversion between rounds, one or two 64-bit modulos per round.


@njit(cache=True)
def _to_int(X, lo, hi, radix, reverse):
    n = X.shape[0]
    out = np.empty(n, np.uint64)
    r = np.uint64(radix)
    for i in range(n):
        x = np.uint64(0)
        if reverse:
            for j in range(hi - 1, lo - 1, -1):
                x = x * r + np.uint64(X[i, j])
        else:
            for j in range(lo, hi):
                x = x * r + np.uint64(X[i, j])
        out[i] = x
    return out


@njit(cache=True)
def _to_digits(vals, m, radix, reverse, out, col):
    r = np.uint64(radix)
    for i in range(vals.shape[0]):
        x = vals[i]
        for j in range(m):
            dgt = np.uint8(x % r)
            x = x // r
            if reverse:
                out[i, col + j] = dgt
            else:
                out[i, col + m - 1 - j] = dgt


@njit(cache=True)
def _ff1_q_int(B, tweak, tlen, qlen, b, rnd, y0, q):
    """Fill q (N, qlen) with Q = T || 0^pad || [rnd] || [B]^b, Y0 xored into the first block.
    Every byte is written, so q is reused across rounds without clearing."""
    n = B.shape[0]
    for i in range(n):
        for j in range(tlen):
            q[i, j] = tweak[i, j]
        for j in range(tlen, qlen - b):
            q[i, j] = 0
        q[i, qlen - b - 1] = rnd
        x = B[i]
        for k in range(b):
            q[i, qlen - 1 - k] = np.uint8((x >> np.uint64(8 * k)) & np.uint64(0xFF)) if k < 8 else 0
        for j in range(16):
            q[i, j] ^= y0[j]


@njit(cache=True, inline="always")
def _bswap64(x):
    x = ((x & np.uint64(0x00000000FFFFFFFF)) << np.uint64(32)) | (x >> np.uint64(32))
    x = ((x & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16)) | (
        (x >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    )
    x = ((x & np.uint64(0x00FF00FF00FF00FF)) << np.uint64(8)) | (
        (x >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)
    )
    return x


@njit(cache=True)
def _ff1_q16(B, b, rnd, y0w, q64):
    """The one-block Q of FF1 without a tweak (b <= 7), as two little-endian words per row."""
    for i in range(B.shape[0]):
        tail = (np.uint64(rnd) << np.uint64(8 * b)) | B[i]  # bytes 8..15, big-endian
        q64[i, 0] = y0w[0]
        q64[i, 1] = y0w[1] ^ _bswap64(tail)


@njit(cache=True, inline="always")
def _add_mod(a, r, Mu, sign):
    """(a + sign * r) mod Mu for a, r < Mu."""
    if sign > 0:
        c = a + r
        return c - Mu if c >= Mu else c
    return a - r if a >= r else a + (Mu - r)


@njit(cache=True)
def _round_int8(A, S64, M, sign):
    """_round_int for d = 8: y is the first 8 bytes of S, big-endian (no next Q)."""
    return _round8_q16(A, S64, M, sign, 0, -1, np.zeros(2, np.uint64), np.zeros((1, 2), np.uint64))


@njit(cache=True)
def _round8_q16(A, S64, M, sign, b, nxt, y0w, q64):
    """One FF1 round for d = 8 (_round_int8), then, when `nxt` >= 0, the next round's one-block
    Q from the new half c (_ff1_q16): in both directions the next Q is made from c."""
    n = A.shape[0]
    out = np.empty(n, np.uint64)
    Mu = np.uint64(M)
    for i in range(n):
        r = _bswap64(S64[i, 0]) % Mu
        c = _add_mod(A[i], r, Mu, sign)
        out[i] = c
        if nxt >= 0:
            tail = (np.uint64(nxt) << np.uint64(8 * b)) | c
            q64[i, 0] = y0w[0]
            q64[i, 1] = y0w[1] ^ _bswap64(tail)
    return out


@njit(cache=True, inline="always")
def _luhn_digit(dgt, pos):
    """A digit's share of the Luhn sum, `pos` places from the right (every second doubled)."""
    if pos % 2 == 1:
        dgt *= 2
        if dgt > 9:
            dgt -= 9
    return dgt


@njit(cache=True)
def _ff3_p_int(B, w, rnd):
    """REVB(P) for FF3-1, P = (W xor [rnd]^4) || [NUM_radix(REV(B))]^12, ready for AES."""
    n = B.shape[0]
    p = np.zeros((n, 16), np.uint8)
    for i in range(n):
        p[i, 15] = w[i, 0]
        p[i, 14] = w[i, 1]
        p[i, 13] = w[i, 2]
        p[i, 12] = w[i, 3] ^ rnd
        x = B[i]
        for k in range(8):  # P[15 - k] = byte k of x (little end); reversed: position k
            p[i, k] = np.uint8((x >> np.uint64(8 * k)) & np.uint64(0xFF))
    return p


@njit(cache=True)
def _round_int(A, S, d, M, sign, reverse_s):
    """c = (A + sign * NUM(S[:, :d])) mod M, in 64-bit arithmetic (M < 2^56)."""
    n = A.shape[0]
    out = np.empty(n, np.uint64)
    Mu = np.uint64(M)
    for i in range(n):
        r = np.uint64(0)
        for q in range(d):
            if r >= np.uint64(1 << 56):
                r = r % Mu
            byte = S[i, 15 - q] if reverse_s else S[i, q]
            r = (r << np.uint64(8)) | np.uint64(byte)
        r = r % Mu
        c = _add_mod(A[i], r, Mu, sign)
        out[i] = c
    return out


class _Ff1Int:
    """FF1 rounds over halves held as integers (radix^v < 2^56), set up once per key, radix,
    length and tweak length."""

    def __init__(self, radix: int, n: int, t: int, key: bytes) -> None:
        self.radix, self.n, self.t = radix, n, t
        self.u, self.v, self.b, self.d, p = _ff1_params(radix, n, t)
        self.ecb = _ecb_for(key)
        self.y0 = self.ecb(np.frombuffer(p, np.uint8).reshape(1, 16))[0]
        self.qlen = t + ((-t - self.b - 1) % 16) + 1 + self.b
        self.one_block = self.qlen == 16 and t == 0 and self.b <= 7 and sys.byteorder == "little"
        self.fused = self.one_block and self.d == 8
        self.mods = (radix**self.u, radix**self.v)

    def halves(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _to_int(X, 0, self.u, self.radix, False), _to_int(
            X, self.u, self.n, self.radix, False
        )

    def digits(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        out = np.empty((A.shape[0], self.n), np.uint8)
        _to_digits(A, self.u, self.radix, False, out, 0)
        _to_digits(B, self.v, self.radix, False, out, self.u)
        return out

    def run(
        self, A: np.ndarray, B: np.ndarray, tweak: np.ndarray, decrypt: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ten rounds (FF1.Encrypt steps 6.i-6.vi, or FF1.Decrypt's) on halves A, B."""
        N = A.shape[0]
        rounds = list(range(9, -1, -1)) if decrypt else list(range(10))
        sign = -1 if decrypt else 1
        q = np.empty((N, self.qlen), np.uint8)
        y0w = self.y0.view(np.uint64)
        if self.fused:  # per round: one AES-ECB call and one Numba call
            buf = bytearray(N * 16 + 15)
            r64 = np.frombuffer(buf, np.uint64, count=2 * N).reshape(N, 2)
            q64 = q.view(np.uint64)
            _ff1_q16(A if decrypt else B, self.b, rounds[0], y0w, q64)
            for k, i in enumerate(rounds):
                self.ecb.into(q, buf)
                nxt = rounds[k + 1] if k + 1 < len(rounds) else -1
                M = self.mods[0] if i % 2 == 0 else self.mods[1]
                c = _round8_q16(B if decrypt else A, r64, M, sign, self.b, nxt, y0w, q64)
                A, B = (c, A) if decrypt else (B, c)
            return A, B
        tw = np.ascontiguousarray(tweak, dtype=np.uint8)
        for i in rounds:
            M = self.mods[0] if i % 2 == 0 else self.mods[1]
            src = A if decrypt else B
            if self.one_block:
                _ff1_q16(src, self.b, i, y0w, q.view(np.uint64))
            else:
                _ff1_q_int(src, tw, self.t, self.qlen, self.b, i, self.y0, q)
            r = self.ecb(q[:, :16])
            for j in range(1, self.qlen // 16):
                r = self.ecb(r ^ q[:, 16 * j : 16 * j + 16])
            x = B if decrypt else A
            if self.d == 8 and sys.byteorder == "little":
                c = _round_int8(x, r.view(np.uint64), M, sign)
            else:
                c = _round_int(x, r, self.d, M, sign, False)
            A, B = (c, A) if decrypt else (B, c)
        return A, B


def _ff1_int(X: np.ndarray, radix: int, key: bytes, tweak: np.ndarray, decrypt: bool) -> np.ndarray:
    f = _Ff1Int(radix, X.shape[1], tweak.shape[1], key)
    A, B = f.halves(X)
    return f.digits(*f.run(A, B, tweak, decrypt))


def _ff3_int(
    X: np.ndarray, radix: int, key: bytes, tl: np.ndarray, tr: np.ndarray, decrypt: bool
) -> np.ndarray:
    N, n = X.shape
    u = (n + 1) // 2
    v = n - u
    ecb = _ecb_for(bytes(reversed(key)))
    A = _to_int(X, 0, u, radix, True)  # NUM_radix(REV(A))
    B = _to_int(X, u, n, radix, True)
    rounds = range(7, -1, -1) if decrypt else range(8)
    for i in rounds:
        m = u if i % 2 == 0 else v
        w = tr if i % 2 == 0 else tl
        src = A if decrypt else B
        s = ecb(_ff3_p_int(src, w, i))  # S = REVB(output): read reversed in _round_int
        if decrypt:
            c = _round_int(B, s, 16, radix**m, -1, True)
            B, A = A, c
        else:
            c = _round_int(A, s, 16, radix**m, 1, True)
            A, B = B, c
    out = np.empty((N, n), np.uint8)
    _to_digits(A, u, radix, True, out, 0)
    _to_digits(B, v, radix, True, out, u)
    return out


def _ff1_params(radix: int, n: int, t: int) -> tuple[int, int, int, int, bytes]:
    u = n // 2
    v = n - u
    # b = ceil(ceil(v * log2(radix)) / 8), with exact integer arithmetic
    b = (((radix**v) - 1).bit_length() + 7) // 8
    d = 4 * math.ceil(b / 4) + 4
    p = (
        bytes([1, 2, 1])
        + radix.to_bytes(3, "big")
        + bytes([10, u % 256])
        + n.to_bytes(4, "big")
        + t.to_bytes(4, "big")
    )
    return u, v, b, d, p


def ff1_digits(
    X: np.ndarray, radix: int, key: bytes, tweak: np.ndarray, decrypt: bool = False
) -> np.ndarray:
    """FF1 over rows of digits X (N, n), all with the same tweak length (tweak is (N, t)).

    Digits are most significant first, as in SP 800-38G. Returns a new (N, n) array.
    """
    N, n = X.shape
    if radix ** (n - n // 2) < 2**56:
        return _ff1_int(X, radix, key, tweak, decrypt)
    t = tweak.shape[1]
    u, v, b, d, p = _ff1_params(radix, n, t)
    ecb = _ecb_for(key)
    y0 = ecb(np.frombuffer(p, np.uint8).reshape(1, 16))[0]
    qlen = t + ((-t - b - 1) % 16) + 1 + b
    A = np.ascontiguousarray(X[:, :u], dtype=np.uint8)
    B = np.ascontiguousarray(X[:, u:], dtype=np.uint8)
    tw = np.ascontiguousarray(tweak, dtype=np.uint8)
    small = radix**v < 2**64
    rounds = range(9, -1, -1) if decrypt else range(10)
    for i in rounds:
        m = u if i % 2 == 0 else v
        src = A if decrypt else B  # the half that feeds the round function
        q = _ff1_q(src, radix, tw, t, qlen, b, i, y0, small)
        r = ecb(q[:, :16])
        for j in range(1, qlen // 16):
            r = ecb(r ^ q[:, 16 * j : 16 * j + 16])
        if d > 16:
            ext = [r]
            for j in range(1, (d + 15) // 16):
                ctr = np.zeros(16, np.uint8)
                ctr[-4:] = np.frombuffer(j.to_bytes(4, "big"), np.uint8)
                ext.append(ecb(r ^ ctr))
            r = np.ascontiguousarray(np.concatenate(ext, axis=1))
        c = np.empty((N, m), np.uint8)
        if decrypt:
            _add_y(B, r, d, radix, m, -1, c)
            B, A = A, c
        else:
            _add_y(A, r, d, radix, m, 1, c)
            A, B = B, c
    return np.concatenate([A, B], axis=1)


@njit(cache=True)
def _ff3_p(B, radix, w, rnd):
    """P = (W xor [rnd]^4) || [NUM_radix(REV(B))]^12 per row; B digits in string order, W (N, 4)."""
    n = B.shape[0]
    v = B.shape[1]
    p = np.zeros((n, 16), np.uint8)
    limbs = np.zeros(8, np.int64)
    for i in range(n):
        p[i, 0] = w[i, 0]
        p[i, 1] = w[i, 1]
        p[i, 2] = w[i, 2]
        p[i, 3] = w[i, 3] ^ rnd
        for j in range(8):
            limbs[j] = 0
        nl = 0
        for j in range(v - 1, -1, -1):  # REV(B): the last numeral is the most significant
            nl = _limbs_mul_add(limbs, nl, radix, np.int64(B[i, j]))
        for k in range(12):
            limb = k // 4
            shift = 8 * (k % 4)
            p[i, 15 - k] = (limbs[limb] >> shift) & 0xFF if limb < nl else 0
    return p


def ff3_1_digits(
    X: np.ndarray, radix: int, key: bytes, tweak: bytes | np.ndarray, decrypt: bool = False
) -> np.ndarray:
    """FF3-1 over rows of digits X (N, n) (string order), with one 56-bit tweak (7 bytes) for
    the batch or one per row ((N, 7) uint8)."""
    N, n = X.shape
    if isinstance(tweak, bytes):
        if len(tweak) != 7:
            raise ValueError("FF3-1 needs a 56-bit (7-byte) tweak")
        tweak = np.broadcast_to(np.frombuffer(tweak, np.uint8), (N, 7))
    t = np.asarray(tweak, np.uint8)
    # 56-bit tweak -> 64-bit: T = T[0..27] || 0^4 || T[32..55] || T[28..31] || 0^4 (Rev. 1)
    t64 = np.empty((N, 8), np.uint8)
    t64[:, 0:3] = t[:, 0:3]
    t64[:, 3] = t[:, 3] & 0xF0
    t64[:, 4:7] = t[:, 4:7]
    t64[:, 7] = (t[:, 3] & 0x0F) << 4
    tl = np.ascontiguousarray(t64[:, :4])
    tr = np.ascontiguousarray(t64[:, 4:])
    if radix ** ((n + 1) // 2) < 2**56:
        return _ff3_int(X, radix, key, tl, tr, decrypt)
    u = (n + 1) // 2
    v = n - u
    ecb = _ecb_for(bytes(reversed(key)))
    A = np.ascontiguousarray(X[:, :u], dtype=np.uint8)
    B = np.ascontiguousarray(X[:, u:], dtype=np.uint8)
    rounds = range(7, -1, -1) if decrypt else range(8)
    for i in rounds:
        m = u if i % 2 == 0 else v
        w = tr if i % 2 == 0 else tl
        src = A if decrypt else B
        p = _ff3_p(src, radix, w, i)
        s = np.ascontiguousarray(
            ecb(np.ascontiguousarray(p[:, ::-1]))[:, ::-1]
        )  # REVB(CIPH_REVB(K)(REVB(P)))
        c = np.empty((N, m), np.uint8)
        # FF3 numerals are little-endian (REV): flip, add or subtract, flip back
        target = B if decrypt else A
        _add_y_digits(
            np.ascontiguousarray(target[:, ::-1]), s, 16, radix, m, -1 if decrypt else 1, c
        )
        c = np.ascontiguousarray(c[:, ::-1])
        if decrypt:
            B, A = A, c
        else:
            A, B = B, c
    return np.concatenate([A, B], axis=1)


# ------------------------------------------------------------------ string level


@njit(cache=True)
def _numerals(offsets, data, valid, lut):
    """Per value: count of alphabet characters, and their digits in a flat array."""
    n = offsets.shape[0] - 1
    count = np.zeros(n, np.int64)
    total = 0
    for i in range(n):
        if not valid[i]:
            continue
        c = 0
        for p in range(offsets[i], offsets[i + 1]):
            if lut[data[p]] >= 0:
                c += 1
        count[i] = c
        total += c
    flat = np.empty(total, np.uint8)
    start = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        start[i] = o
        if not valid[i]:
            continue
        for p in range(offsets[i], offsets[i + 1]):
            x = lut[data[p]]
            if x >= 0:
                flat[o] = x
                o += 1
    start[n] = o
    return count, flat, start


@njit(cache=True)
def _rebuild(offsets, data, valid, lut, alphabet, flat, start):
    n = offsets.shape[0] - 1
    out = np.empty(offsets[n] - offsets[0] + 1, np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        k = start[i]
        for p in range(offsets[i], offsets[i + 1]):
            c = data[p]
            if valid[i] and lut[c] >= 0:
                out[o] = alphabet[flat[k]]
                k += 1
            else:
                out[o] = c
            o += 1
        off[i + 1] = o
    return off, out[:o].copy()


@njit(cache=True)
def _gather(flat, start, rows, offset, length):
    out = np.empty((rows.shape[0], length), np.uint8)
    for k in range(rows.shape[0]):
        s = start[rows[k]] + offset
        for j in range(length):
            out[k, j] = flat[s + j]
    return out


@njit(cache=True)
def _scatter(flat, start, rows, Y):
    for k in range(rows.shape[0]):
        s = start[rows[k]]
        for j in range(Y.shape[1]):
            flat[s + j] = Y[k, j]


@njit(cache=True)
def _luhn_ok(head, tail):
    """Luhn check over head digits followed by tail digits (rows)."""
    n = head.shape[0]
    ok = np.zeros(n, np.bool_)
    for i in range(n):
        total = 0
        pos = 0
        for j in range(tail.shape[1] - 1, -1, -1):
            dgt = tail[i, j]
            total += _luhn_digit(dgt, pos)
            pos += 1
        for j in range(head.shape[1] - 1, -1, -1):
            dgt = head[i, j]
            total += _luhn_digit(dgt, pos)
            pos += 1
        ok[i] = total % 10 == 0
    return ok


# the digit d whose doubled Luhn share (2d, minus 9 when over 9) is the index
_UNDOUBLE = np.array([0, 5, 1, 6, 2, 7, 3, 8, 4, 9], np.int64)


@njit(cache=True)
def _luhn_fix(Y, tail):
    """Set each row's last digit of Y to the one that makes Y followed by its tail pass Luhn:
    the digit is a function of the others (a bijection of its share of the sum), so every
    other digit can be anything and one digit value completes it."""
    n, m = Y.shape
    k = tail.shape[1]  # the fixed digit's place from the right
    for i in range(n):
        total = 0
        pos = 0
        for j in range(k - 1, -1, -1):
            total += _luhn_digit(np.int64(tail[i, j]), pos)
            pos += 1
        pos += 1  # the fixed digit's own place
        for j in range(m - 2, -1, -1):
            total += _luhn_digit(np.int64(Y[i, j]), pos)
            pos += 1
        need = (10 - total % 10) % 10
        Y[i, m - 1] = _UNDOUBLE[need] if k % 2 == 1 else need


def _max_len(radix: int, mode: str) -> int:
    if mode == "ff3-1":
        return 2 * int(math.floor(96 / math.log2(radix)))
    return MAX_NUMERALS


def _min_len(radix: int) -> int:
    n = 1
    while radix**n < MIN_DOMAIN:
        n += 1
    return n


_TWEAK_KEY = b"raymask fpe tweak v1"


def _tweak_matrix(tweak: bytes | pa.Array, n: int, mode: str) -> np.ndarray:
    """Per-value tweak bytes, (n, t). A constant is used as given (FF1; FF3-1 when it has 7
    bytes), so outputs interoperate with other implementations. Per-value tweaks (another
    field's values) and FF3-1 constants of another length are condensed to a fixed length with
    HMAC-SHA-256 under a fixed public key (16 bytes for FF1, 7 for FF3-1): a keyless hash, so
    equal tweak values give equal tweaks, computed by the Numba kernel for the whole column."""
    from raymask.kernels.tokenize import hmac_sha256

    want = 7 if mode == "ff3-1" else 16
    if isinstance(tweak, bytes):
        if mode == "ff3-1" and len(tweak) != 7:
            tweak = hmac_sha256(pa.array([tweak], pa.binary()), _TWEAK_KEY)[0, :7].tobytes()
        return np.broadcast_to(np.frombuffer(tweak, np.uint8), (n, len(tweak)))
    return np.ascontiguousarray(hmac_sha256(tweak, _TWEAK_KEY)[:, :want])


def _crypt(
    values: pa.Array | pa.ChunkedArray,
    key: bytes,
    *,
    radix: int,
    mode: str,
    tweak: bytes | pa.Array,
    keep_last: int,
    luhn: bool,
    decrypt: bool,
) -> tuple[pa.Array, np.ndarray]:
    values = as_text(values)
    if radix not in ALPHABETS:
        raise ValueError(f"radix must be one of {sorted(ALPHABETS)}")
    if mode not in ("ff1", "ff3-1"):
        raise ValueError("mode must be ff1 or ff3-1")
    if luhn and radix != 10:
        raise ValueError("luhn needs radix 10")
    alphabet = np.frombuffer(ALPHABETS[radix].encode(), np.uint8)
    lut = np.full(256, -1, np.int64)
    lut[alphabet] = np.arange(radix)
    buf = string_buffers(values)  # digits travel as uint8 (radix <= 62)
    n = len(buf)
    count, flat, start = _numerals(buf.offsets, buf.data, buf.valid, lut)
    enc_len = count - keep_last
    ciphered = enc_len - int(luhn)  # with `luhn`, the last of them is derived, not enciphered
    err = np.zeros(n, np.int8)
    err[buf.valid & (ciphered < _min_len(radix))] = E_SHORT
    err[buf.valid & (ciphered > _max_len(radix, mode))] = E_LONG
    tw_all = _tweak_matrix(tweak, n, mode)
    out_flat = flat.copy()
    todo = np.flatnonzero(buf.valid & (err == 0))
    for length in np.unique(enc_len[todo]):
        rows = todo[enc_len[todo] == length]
        X = _gather(flat, start, rows, 0, int(length))
        tail = _gather(flat, start, rows, int(length), keep_last)
        tw = np.ascontiguousarray(tw_all[rows])

        def step(xs: np.ndarray, tw: np.ndarray) -> np.ndarray:
            fn = ff1_digits if mode == "ff1" else ff3_1_digits
            return fn(np.ascontiguousarray(xs), radix, key, tw, decrypt)

        if luhn:
            # only a Luhn-valid number has an image (encrypting) or is one (decrypting)
            bad_in = ~_luhn_ok(X, tail)
            err[rows[bad_in]] = E_LUHN
            keep = ~bad_in
            rows, X, tail, tw = rows[keep], X[keep], tail[keep], tw[keep]
            if not len(rows):
                continue
            # the last encrypted numeral is the Luhn digit of the others: they are enciphered
            # (or deciphered), and it is derived again; a permutation of the Luhn-valid numbers
            Y = np.empty_like(X)
            Y[:, :-1] = step(X[:, :-1], tw)
            _luhn_fix(Y, tail)
        else:
            Y = step(X, tw)
        _scatter(out_flat, start, rows, np.ascontiguousarray(Y, dtype=np.uint8))
    ok = buf.valid & (err == 0)
    off, data = _rebuild(buf.offsets, buf.data, ok, lut, alphabet, out_flat, start)
    return string_array(off, data, ok, like=values.type), err


def fpe_encrypt(
    values: pa.Array | pa.ChunkedArray,
    key: bytes,
    *,
    radix: int = 10,
    mode: str = "ff1",
    tweak: bytes | pa.Array = b"",
    keep_last: int = 0,
    luhn: bool = False,
) -> tuple[pa.Array, np.ndarray]:
    """Encrypt every value's alphabet characters in place; returns (values, error codes).

    `tweak` is a constant or an array of per-value tweaks (another field's values). With
    `keep_last` the last k numerals stay in clear (and are not part of the encrypted string).
    With `luhn` (radix 10) the card number must be Luhn-valid and the output is too: the last
    encrypted numeral is derived from the others (which are the ones enciphered).
    """
    return _crypt(
        values,
        key,
        radix=radix,
        mode=mode,
        tweak=tweak,
        keep_last=keep_last,
        luhn=luhn,
        decrypt=False,
    )


def fpe_decrypt(
    values: pa.Array | pa.ChunkedArray,
    key: bytes,
    *,
    radix: int = 10,
    mode: str = "ff1",
    tweak: bytes | pa.Array = b"",
    keep_last: int = 0,
    luhn: bool = False,
) -> tuple[pa.Array, np.ndarray]:
    """Inverse of `fpe_encrypt` with the same key and options."""
    return _crypt(
        values,
        key,
        radix=radix,
        mode=mode,
        tweak=tweak,
        keep_last=keep_last,
        luhn=luhn,
        decrypt=True,
    )
