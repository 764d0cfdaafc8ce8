"""CTR_DRBG: NIST CAVP known answers, the fast path equals a block-by-block reference."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from raymask.kernels import rng as rng_mod
from raymask.kernels.rng import CtrDrbg, SecureRandom
from tests.chance import ALPHA

# NIST CAVP "CTR_DRBG AES-256 no df, PredictionResistance = False" (drbgvectors_pr_false), as
# mirrored in aws-lc's crypto/fipsmodule/rand/ctrdrbg_vectors.txt. Procedure: instantiate
# (entropy, personalization), reseed (entropy, additional), generate 512 bits twice (with AI1,
# AI2), compare the second output.
# fields: entropy, personalization, reseed entropy, reseed additional, AI1, AI2, returned bits
CAVP = [
    pytest.param(
        "e4bc23c5089a19d86f4119cb3fa08c0a4991e0a1def17e101e4c14d9c323460a7c2fb58e0b086c6c57b55f56cae25bad",
        "", "fd85a836bba85019881e8c6bad23c9061adc75477659acaea8e4a01dfe07a1832dad1c136f59d70f8653a5dc118663d6",
        "", "", "",
        "b2cb8905c05e5950ca31895096be29ea3d5a3b82b269495554eb80fe07de43e193b9e7c3ece73b80e062b1c1f68202fbb1c52a040ea2478864295282234aaada",
        id="no-inputs-0",
    ),
    pytest.param(
        "edfdb55e77d418a63e4414dfd42225ed257cf74e99325fba26e8f3a4524a71bc80a731af23256908cb4675a9c253ea6f",
        "", "a9372fea93d607fbbc75a97b7f65f2d4ae8c06bd184981572e888a35c5794d2bb380a4ae04bba27f2efcc9e7914b96dc",
        "", "", "",
        "11b1a0f0bb935ec0c54e089e0cd20832d1f00e7069f30e9ea2e35b7f15ecf0577d0e90035bf0f91ffd9e8a1fa8a507503739afbec19393e02c9b7c230cdea36f",
        id="no-inputs-1",
    ),
    pytest.param(
        "99903165903fea49c2db26ed675e44cc14cb2c1f28b836b203240b02771e831146ffc4335373bb344688c5c950670291",
        "", "b4ee99fa9e0eddaf4a3612013cd636c4af69177b43eebb3c58a305b9979b68b5cc820504f6c029aad78a5d29c66e84a0",
        "2d8c5c28b05696e74774eb69a10f01c5fabc62691ddf7848a8004bb5eeb4d2c5febe1aa01f4d557b23d7e9a0e4e90655",
        "0dc9cde42ac6e856f01a55f219c614de90c659260948db5053d414bab0ec2e13e995120c3eb5aafc25dc4bdcef8ace24",
        "711be6c035013189f362211889248ca8a3268e63a7eb26836d915810a680ac4a33cd1180811a31a0f44f08db3dd64f91",
        "11c7a0326ea737baa7a993d510fafee5374e7bbe17ef0e3e29f50fa68aac2124b017d449768491cac06d136d691a4e80785739f9aaedf311bba752a3268cc531",
        id="additional-inputs",
    ),
    pytest.param(
        "6942413e05ac487cf539bc61aa6866ef8cbd9d0f15e1385f37bba5a951a29fc956d46f8740603af7c71800048c8312ad",
        "47ebb16c24bc17ad179e6730407526187cf9332c172ae56037aee471a0dcfa766fe51808c0a47fd06b9e34bded006c8b",
        "d8275ad1545bc24e77213ce1dfa480d3b7a56a2d5f26c1ab345f9f0ac712ad004b0f6f033b6014c0f78069f92840f62b",
        "", "", "",
        "1b74cfa6344d294ec3ac8002c510b86c0b459cf7823aeb05336a20c1355a3193966fdc8ba8f7cc1371c9c70a9f7ff553c4c6dadf23f2cb08e4040af51f172ac0",
        id="personalization",
    ),
    pytest.param(
        "ae7ebe062971f5eb32e5b21444750785de816595ad2cbe80a209c8f8ab04b5468166de8c6ae522d8f10b56386a3b424f",
        "55860dae57fcac297087c137efb796878a75868f6e7681114e9b73ed0c67e3c62bfc9f5d77e8caa59bcdb223f4ffd247",
        "a42407931bfeca70e6ee5dd197021a129525051c07468e8b25587c5ad50abe9204e882fe847b8fd47cf7b4360e5aa034",
        "ee4c88d1eb05f4853663eada501d2fc4b4984b283a88db579af2113031e03d9bc570de943dd168918f3ba8065581fea7",
        "4b4b03ef19b0f259dca2b3ee3ae4cd86c3895a784b3d8eee043a2003c08289f8fffdad141e6b1ab2174d8d5d79c1e581",
        "3062b33f116b46e20fe3c354726ae9b2a3a4c51922c8107863cb86f1f0bdad7554075659d91c371e2b11b1e8106a1ed5",
        "0d270518baeafac160ff1cb28c11ef68712c764c0c01674e6c9ca2cc9c7e0e8accfd3c753635ee070081eee7628af6187fbc2854b3c204461a796cf3f3fcb092",
        id="personalization-and-additional",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("ent", "pers", "ent2", "add_r", "ai1", "ai2", "expected"), CAVP)
def test_matches_nist_cavp_ctr_drbg_aes256_no_df(ent, pers, ent2, add_r, ai1, ai2, expected):
    h = bytes.fromhex
    d = CtrDrbg(h(ent), h(pers))
    d.reseed(h(ent2), h(add_r))
    d.generate(64, h(ai1))
    assert d.generate(64, h(ai2)).hex() == expected


class _ReferenceDrbg:
    """SP 800-90A 10.2.1 written block by block with AES-ECB, no shortcuts (test oracle)."""

    def __init__(self, entropy: bytes) -> None:
        self.key, self.v = bytes(32), 0
        self.update(entropy)

    def block(self) -> bytes:
        self.v = (self.v + 1) % 2**128
        enc = Cipher(algorithms.AES(self.key), modes.ECB()).encryptor()
        return enc.update(self.v.to_bytes(16, "big"))

    def update(self, provided: bytes) -> None:
        temp = b"".join(self.block() for _ in range(3))
        temp = bytes(a ^ b for a, b in zip(temp, provided, strict=True))
        self.key, self.v = temp[:32], int.from_bytes(temp[32:], "big")

    def generate(self, n: int) -> bytes:
        out = b"".join(self.block() for _ in range(-(-n // 16)))[:n]
        self.update(bytes(48))
        return out


def test_secure_random_stream_equals_block_by_block_reference():
    r = SecureRandom._for_tests(7, reseed_interval=3)
    # the reference sees the same entropy: the test constructor's SHA-384(seed, counter)
    counter = iter(range(1, 100))

    def ent(n: int) -> bytes:
        return hashlib.sha384(b"raymask-test-seed:7:%d" % next(counter)).digest()[:n]

    ref = _ReferenceDrbg(ent(48))
    # 70 000 words = 560 000 bytes = 9 requests of 64 KiB: crosses requests and 2 reseeds
    got = r.uint64(70_000).tobytes()
    want = b""
    pos = 0
    requests = 0
    while pos < len(got):
        if requests and requests % 3 == 0:  # reseed_counter > interval before this request
            ref.update(ent(48))
        n = min(rng_mod.MAX_REQUEST_BYTES, len(got) - pos)
        want += ref.generate(n)
        pos += n
        requests += 1
    assert r.reseeds == 2  # before requests 4 and 7
    assert got == want


def test_odd_sized_requests_continue_the_stream():
    a = SecureRandom._for_tests(3)
    b = SecureRandom._for_tests(3)
    # a request is 64 KiB at most; sizes that are not multiples of 16 drop the block's rest
    one = a.random_bytes(3 * rng_mod.MAX_REQUEST_BYTES + 5)
    two = b.random_bytes(rng_mod.MAX_REQUEST_BYTES).tobytes() + b.random_bytes(2 * 16).tobytes()
    # the second call is a new request: it equals the start of the second 64 KiB request
    assert one[: rng_mod.MAX_REQUEST_BYTES + 32].tobytes() == two
    with pytest.raises(ValueError, match="at most"):
        CtrDrbg(bytes(48)).generate(rng_mod.MAX_REQUEST_BYTES + 1)


def test_os_seeded_instances_differ_and_test_seed_is_marked():
    assert not SecureRandom().seeded and SecureRandom._for_tests(1).seeded
    assert SecureRandom().uint64(4).tolist() != SecureRandom().uint64(4).tolist()
    assert (
        SecureRandom._for_tests(5).uint64(8).tolist()
        == SecureRandom._for_tests(5).uint64(8).tolist()
    )
    with pytest.raises(TypeError):
        SecureRandom(seed=1)  # no seed on the production constructor


def test_a_forked_child_reseeds(monkeypatch):
    r = SecureRandom._for_tests(9)
    r.uint64(1)
    monkeypatch.setattr(rng_mod.os, "getpid", lambda: -1)
    r.uint64(1)
    assert r.reseeds == 1


def test_bits_are_uniform():
    # every one of the 64 bit positions over 10**6 words: each a binomial z-test, and the 64
    # p-values together under a KS test against uniform; false-failure rate ALPHA
    w = SecureRandom().uint64(1_000_000)
    bits = (w[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    ones = bits.sum(axis=0).astype(np.float64)
    z = (ones - 500_000) / np.sqrt(250_000)
    p = 2 * stats.norm.sf(np.abs(z))
    assert stats.kstest(p, "uniform").pvalue > ALPHA


def test_threads_sharing_one_source_never_get_the_same_words():
    """A Serve replica masks requests in threads on one core, so one SecureRandom: the AES call
    lets go of the GIL, and without the lock two threads read the same state and drew the same
    words (106,768 repeats in 384,000 here), i.e. the same noise in two requests. By chance a
    repeat among 384,000 random 64-bit words has probability 4e-9."""
    import sys
    import threading

    src = SecureRandom()
    outs: list[list[np.ndarray]] = [[] for _ in range(8)]

    def work(i: int) -> None:
        for _ in range(3000):
            outs[i].append(src.uint64(16))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    words = np.concatenate([w for o in outs for w in o])
    assert len(words) == 384_000 and len(np.unique(words)) == len(words)
