"""AES-SIV, batched: byte-identical to cryptography's AESSIV, round trips, tamper detection."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels.siv import (
    E_AUTH,
    E_FORMAT,
    E_VERSION,
    decrypt_column,
    encrypt_column,
    siv_decrypt,
    siv_encrypt,
)


def test_rfc5297_vector_a1():
    key = bytes.fromhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    ad = bytes.fromhex("101112131415161718191a1b1c1d1e1f2021222324252627")
    pt = bytes.fromhex("112233445566778899aabbccddee")
    out = siv_encrypt(pa.array([pt], pa.binary()), key, ad)
    assert out[0].as_py().hex() == "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c"


@pytest.mark.parametrize("keylen", [32, 48, 64])
@pytest.mark.parametrize("ad", [None, b"payments/customer.name"])
def test_matches_cryptography_aessiv_on_random_values(keylen, ad):
    rng = random.Random(keylen)
    # lengths around the 16-byte boundaries matter (S2V switches between xorend and pad)
    vals = ["x" * n for n in range(0, 50)] + [
        os.urandom(rng.randint(0, 200)).hex()[: rng.randint(0, 300)] for _ in range(3000)
    ]
    vals += ["Zoë Łukasz 🚀", None]
    key = os.urandom(keylen)
    out = siv_encrypt(pa.array(vals), key, ad)
    oracle = AESSIV(key)
    assert out.to_pylist() == [
        None if v is None else oracle.encrypt(v.encode(), None if ad is None else [ad])
        for v in vals
    ]
    back, err = siv_decrypt(out, key, ad)
    assert not err.any()
    assert [None if b is None else b.decode() for b in back.to_pylist()] == vals


def test_text_form_round_trips_across_key_versions():
    k1, k2 = os.urandom(32), os.urandom(32)
    a = encrypt_column(pa.array(["alice", None, ""]), k1, 1, prefix="enc:")
    b = encrypt_column(pa.array(["bob"]), k2, 2, prefix="enc:")
    assert a[0].as_py().startswith("enc:v1.") and b[0].as_py().startswith("enc:v2.")
    both = pa.concat_arrays([a, b])
    text, err = decrypt_column(both, {1: k1, 2: k2}, prefix="enc:")
    assert text.to_pylist() == ["alice", None, "", "bob"] and not err.any()
    # deterministic: same key and value, same ciphertext (joinable)
    assert encrypt_column(pa.array(["alice"]), k1, 1, prefix="enc:")[0] == a[0]


def test_altered_foreign_and_unknown_version_values_are_refused():
    k = os.urandom(32)
    good = encrypt_column(pa.array(["secret-value"]), k, 1)[0].as_py()
    flipped = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    vals = pa.array([good, flipped, "v1.!!!notbase64", "plain text", "v9." + good[3:]])
    text, err = decrypt_column(vals, {1: k})
    assert text.to_pylist()[0] == "secret-value"
    assert err.tolist() == [0, E_AUTH, E_FORMAT, E_FORMAT, E_VERSION]
    assert text.to_pylist()[1:] == [None] * 4
    # another field's associated data does not decrypt
    other = encrypt_column(pa.array(["x"]), k, 1, ad=b"a")
    _, err = decrypt_column(other, {1: k}, ad=b"b")
    assert err.tolist() == [E_AUTH]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.text(max_size=80)), max_size=30),
    st.binary(min_size=32, max_size=32),
)
def test_decrypt_inverts_encrypt(values, key):
    enc = encrypt_column(pa.array(values, pa.string()), key, 4)
    text, err = decrypt_column(enc, {4: key})
    assert text.to_pylist() == values and not err.any()
