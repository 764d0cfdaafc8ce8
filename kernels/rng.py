"""Cryptographically secure random words for the privacy kernels: CTR_DRBG over AES-256.

Method: the CTR_DRBG of NIST SP 800-90A Rev. 1 (section 10.2.1) with AES-256 and no derivation
function: state Key (32 bytes) and V (16 bytes, a 128-bit big-endian counter); seed material is
48 bytes of full-entropy input from the operating system (`os.urandom`) XOR the (zero-padded)
personalization string or additional input; CTR_DRBG_Update re-keys after every request, so a
later compromise of the state does not reveal earlier output (backtracking resistance). The
keystream is `cryptography`'s AES-CTR (OpenSSL, AES-NI where the CPU has it), written into the
output array with `update_into`: one cipher object per request, whose last 48 bytes of keystream
are the Update's new Key || V, so the Update costs no extra cipher call.

Limits kept (SP 800-90A Table 3): at most 2**19 bits (64 KiB) per generate request, and a reseed
from the OS after `reseed_interval` requests (default 2**14, i.e. every 1 GiB of output; the
standard allows 2**48). A process that forks reseeds before its first request in the child (the
parent's and child's streams would otherwise be equal).

Guarantee: `CtrDrbg` returns the NIST CAVP "CTR_DRBG AES-256 no df" known answers (checked in
tests/kernels/test_rng.py); `SecureRandom()` is seeded only from the OS and has no seed argument.
`SecureRandom._for_tests(seed)` derives its entropy from a seed for reproducible tests; it is
marked `seeded` and nothing outside tests may construct it (a policy cannot reach it: the
policy layer only ever calls `SecureRandom()`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["CtrDrbg", "SecureRandom", "MAX_REQUEST_BYTES", "SEEDLEN"]

KEYLEN = 32
BLOCKLEN = 16
SEEDLEN = KEYLEN + BLOCKLEN  # 48 bytes = 384 bits for AES-256
MAX_REQUEST_BYTES = 2**19 // 8  # 64 KiB
_ZEROS = memoryview(bytes(MAX_REQUEST_BYTES + SEEDLEN))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _pad(data: bytes, what: str) -> bytes:
    if len(data) > SEEDLEN:
        raise ValueError(f"{what} is {len(data)} bytes; CTR_DRBG without df takes at most 48")
    return data + bytes(SEEDLEN - len(data))


class CtrDrbg:
    """CTR_DRBG (SP 800-90A, AES-256, no derivation function): instantiate, reseed, generate."""

    def __init__(self, entropy_input: bytes, personalization: bytes = b"") -> None:
        if len(entropy_input) != SEEDLEN:
            raise ValueError(f"entropy input must be {SEEDLEN} bytes, got {len(entropy_input)}")
        self._key = bytes(KEYLEN)
        self._v = 0  # V as an integer mod 2**128
        self._update(_xor(entropy_input, _pad(personalization, "personalization string")))
        self.reseed_counter = 1

    def _keystream_into(self, out: memoryview, nbytes: int) -> None:
        """AES_Key(V+1) || AES_Key(V+2) || ... into out[:nbytes] (nbytes a multiple of 16)."""
        nonce = ((self._v + 1) % 2**128).to_bytes(BLOCKLEN, "big")
        enc = Cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
        enc.update_into(_ZEROS[:nbytes], out)
        self._v = (self._v + nbytes // BLOCKLEN) % 2**128

    def _update(self, provided: bytes) -> None:
        """CTR_DRBG_Update (SP 800-90A 10.2.1.2): three blocks of keystream XOR provided data."""
        buf = bytearray(SEEDLEN + BLOCKLEN - 1)
        self._keystream_into(memoryview(buf), SEEDLEN)
        self._set_state(_xor(bytes(buf[:SEEDLEN]), provided))

    def _set_state(self, temp: bytes) -> None:
        self._key = temp[:KEYLEN]
        self._v = int.from_bytes(temp[KEYLEN:SEEDLEN], "big")

    def reseed(self, entropy_input: bytes, additional_input: bytes = b"") -> None:
        if len(entropy_input) != SEEDLEN:
            raise ValueError(f"entropy input must be {SEEDLEN} bytes, got {len(entropy_input)}")
        self._update(_xor(entropy_input, _pad(additional_input, "additional input")))
        self.reseed_counter = 1

    def generate_into(self, out: memoryview, nbytes: int, additional_input: bytes = b"") -> None:
        """Write `nbytes` (<= 64 KiB) pseudorandom bytes to out[:nbytes].

        `out` must have room for nbytes rounded up to 16, plus 48 + 15 bytes of scratch: the
        Update's keystream is written right after the output, then read back.
        """
        if nbytes > MAX_REQUEST_BYTES:
            raise ValueError(f"a request is at most {MAX_REQUEST_BYTES} bytes, got {nbytes}")
        blocks = -(-nbytes // BLOCKLEN) * BLOCKLEN
        if additional_input:
            additional = _pad(additional_input, "additional input")
            self._update(additional)
        else:
            additional = b""
        # output blocks then the Update's 3 blocks, one keystream (V keeps counting across)
        self._keystream_into(out, blocks + SEEDLEN)
        temp = bytes(out[blocks : blocks + SEEDLEN])
        self._set_state(_xor(temp, additional) if additional else temp)
        self.reseed_counter += 1

    def generate(self, nbytes: int, additional_input: bytes = b"") -> bytes:
        buf = bytearray(-(-nbytes // BLOCKLEN) * BLOCKLEN + SEEDLEN + BLOCKLEN - 1)
        self.generate_into(memoryview(buf), nbytes, additional_input)
        return bytes(buf[:nbytes])


class SecureRandom:
    """Uniform 64-bit words from a CTR_DRBG seeded and reseeded from the OS.

    `uint64(n)` returns n words as a NumPy array, built from 64 KiB requests written straight
    into the array (about 2-4 GB/s here); the Numba samplers consume these blocks.
    """

    seeded = False  # True only for the test constructor

    def __init__(self, *, personalization: bytes = b"", reseed_interval: int = 2**14) -> None:
        self._init(os.urandom, personalization, reseed_interval)

    def _init(
        self, entropy: Callable[[int], bytes], personalization: bytes, reseed_interval: int
    ) -> None:
        if not 1 <= reseed_interval <= 2**48:
            raise ValueError("reseed_interval must be between 1 and 2**48 requests")
        self._entropy = entropy
        self._reseed_interval = reseed_interval
        self._drbg = CtrDrbg(entropy(SEEDLEN), personalization)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._lock_pid = self._pid
        self.reseeds = 0

    @classmethod
    def _for_tests(cls, seed: int, *, reseed_interval: int = 2**14) -> SecureRandom:
        """TESTS ONLY: a reproducible stream whose entropy is SHA-384(seed, counter).

        Never use it for privacy noise: anyone who knows the seed knows the noise.
        """
        counter = [0]

        def entropy(n: int) -> bytes:
            counter[0] += 1
            msg = b"raymask-test-seed:%d:%d" % (seed, counter[0])
            return hashlib.sha384(msg).digest()[:n]

        self = cls.__new__(cls)
        self._init(entropy, b"", reseed_interval)
        self.seeded = True
        return self

    def _check_state(self) -> None:
        pid = os.getpid()
        if pid != self._pid or self._drbg.reseed_counter > self._reseed_interval:
            self._drbg.reseed(self._entropy(SEEDLEN))
            self._pid = pid
            self.reseeds += 1

    def random_bytes(self, n: int) -> np.ndarray:
        """n uniform bytes as a uint8 array. Safe to call from several threads (a Serve replica
        masks requests in threads on one core): the DRBG's state is read and advanced under a
        lock, as the AES call lets go of the GIL, and two threads that read the same state
        would get the same bytes (the same noise)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        out = np.empty(n + SEEDLEN + 2 * BLOCKLEN, dtype=np.uint8)
        view = memoryview(out)
        if self._lock_pid != os.getpid():  # a forked child: the parent's lock may be held
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        pos = 0
        with self._lock:
            while pos < n:
                self._check_state()
                req = min(MAX_REQUEST_BYTES, n - pos)
                # bytes past this request's output are scratch, overwritten by the next request
                self._drbg.generate_into(view[pos:], req)
                pos += req
        return out[:n]

    def uint64(self, n: int) -> np.ndarray:
        """n uniform 64-bit words (native byte order) as a uint64 array."""
        return self.random_bytes(8 * n).view(np.uint64)
