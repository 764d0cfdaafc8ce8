"""FF1 and FF3-1: NIST sample vectors, the libffx and ff3 packages as oracles, round trips,
format preservation and per-value errors."""

from __future__ import annotations

import random

import ff3
import ffx
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels.fpe import ALPHABETS, E_LONG, E_LUHN, E_SHORT, fpe_decrypt, fpe_encrypt
from raymask.loadtest.traffic import luhn_valid

K128 = "2B7E151628AED2A6ABF7158809CF4F3C"
K192 = K128 + "EF4359D8D580AA4F"
K256 = K192 + "7F036D6F04FC6A94"
T_DIG = "39383736353433323130"
T_ALNUM = "3737373770717273373737"

# NIST SP 800-38G FF1 samples 1-9 (key, radix, tweak, plaintext, ciphertext)
FF1_SAMPLES = [
    (K128, 10, "", "0123456789", "2433477484"),
    (K128, 10, T_DIG, "0123456789", "6124200773"),
    (K128, 36, T_ALNUM, "0123456789abcdefghi", "a9tv40mll9kdu509eum"),
    (K192, 10, "", "0123456789", "2830668132"),
    (K192, 10, T_DIG, "0123456789", "2496655549"),
    (K192, 36, T_ALNUM, "0123456789abcdefghi", "xbj3kv35jrawxv32ysr"),
    (K256, 10, "", "0123456789", "6657667009"),
    (K256, 10, T_DIG, "0123456789", "1001623463"),
    (K256, 36, T_ALNUM, "0123456789abcdefghi", "xs8a0azh2avyalyzuwd"),
]


@pytest.mark.parametrize(
    ("key", "radix", "tweak", "pt", "ct"), FF1_SAMPLES, ids=[f"sample{i + 1}" for i in range(9)]
)
def test_ff1_matches_nist_samples(key, radix, tweak, pt, ct):
    k, t = bytes.fromhex(key), bytes.fromhex(tweak)
    out, err = fpe_encrypt(pa.array([pt]), k, radix=radix, tweak=t)
    assert out.to_pylist() == [ct] and err.tolist() == [0]
    assert ffx.FF1(k, radix=radix).encrypt(pt, tweak=t) == ct  # the oracle agrees with NIST too
    back, _ = fpe_decrypt(out, k, radix=radix, tweak=t)
    assert back.to_pylist() == [pt]


# FF3-1 (56-bit tweak) sample, from the ff3 package's documentation
FF3_1_SAMPLES = [
    ("2DE79D232DF5585D68CE47882AE256D6", "CBD09280979564", 10, "3992520240", "8901801106")
]


@pytest.mark.parametrize(("key", "tweak", "radix", "pt", "ct"), FF3_1_SAMPLES)
def test_ff3_1_matches_published_sample(key, tweak, radix, pt, ct):
    out, _ = fpe_encrypt(
        pa.array([pt]), bytes.fromhex(key), radix=radix, mode="ff3-1", tweak=bytes.fromhex(tweak)
    )
    assert out.to_pylist() == [ct]


@pytest.mark.parametrize("radix", [10, 26, 36, 62])
def test_ff1_matches_libffx_on_10k_random_values(radix):
    rng = random.Random(radix)
    alph = ALPHABETS[radix]
    lo = 6 if radix == 10 else 5
    vals = ["".join(rng.choice(alph) for _ in range(rng.randint(lo, 48))) for _ in range(10_000)]
    key = bytes(rng.getrandbits(8) for _ in range(rng.choice([16, 24, 32])))
    tweak = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))
    out, err = fpe_encrypt(pa.array(vals), key, radix=radix, tweak=tweak)
    oracle = ffx.FF1(key, alphabet=alph)
    assert not err.any()
    assert out.to_pylist() == [oracle.encrypt(v, tweak=tweak) for v in vals]
    back, _ = fpe_decrypt(out, key, radix=radix, tweak=tweak)
    assert back.to_pylist() == vals


@pytest.mark.parametrize("radix", [10, 26, 36, 62])
def test_ff3_1_matches_the_ff3_package_on_10k_random_values(radix):
    rng = random.Random(100 + radix)
    alph = ALPHABETS[radix]
    top = 2 * int(96 // np.log2(radix))
    lo = next(n for n in range(1, 40) if radix**n >= 1_000_000)
    vals = ["".join(rng.choice(alph) for _ in range(rng.randint(lo, top))) for _ in range(10_000)]
    key = bytes(rng.getrandbits(8) for _ in range(rng.choice([16, 24, 32])))
    tweak = bytes(rng.getrandbits(8) for _ in range(7))
    out, err = fpe_encrypt(pa.array(vals), key, radix=radix, mode="ff3-1", tweak=tweak)
    oracle = ff3.FF3Cipher.withCustomAlphabet(key.hex(), tweak.hex(), alph)
    assert not err.any()
    assert out.to_pylist() == [oracle.encrypt(v) for v in vals]
    back, _ = fpe_decrypt(out, key, radix=radix, mode="ff3-1", tweak=tweak)
    assert back.to_pylist() == vals


KEY = bytes(range(16))


@pytest.mark.parametrize(
    ("value", "opts", "shape"),
    [
        # separators stay where they were; only digits change
        ("4111-1111-1111-1111", {}, r"\d{4}-\d{4}-\d{4}-\d{4}"),
        ("4111 1111 1111 1111", {"keep_last": 4}, r"\d{4} \d{4} \d{4} 1111"),
        # letters outside the radix-10 alphabet are separators too
        ("ID 123-456-789 x", {}, r"ID \d{3}-\d{3}-\d{3} x"),
        # non-ASCII separators are kept byte for byte
        ("№ 12345678 €", {}, r"№ \d{8} €"),
        ("abc-def-ghij", {"radix": 26}, r"[a-z]{3}-[a-z]{3}-[a-z]{4}"),
    ],
)
def test_format_is_preserved_and_round_trips(value, opts, shape):
    import re

    out, err = fpe_encrypt(pa.array([value]), KEY, **opts)
    assert err.tolist() == [0]
    assert re.fullmatch(shape, out[0].as_py()), out[0].as_py()
    assert out[0].as_py() != value
    back, _ = fpe_decrypt(out, KEY, **opts)
    assert back.to_pylist() == [value]


def test_luhn_option_gives_valid_cards_and_decrypts():
    rng = np.random.default_rng(3)
    from raymask.loadtest.traffic import _cards

    cards = _cards(rng, 2000)
    out, err = fpe_encrypt(cards, KEY, keep_last=4, luhn=True)
    assert not err.any()
    outs = out.to_pylist()
    assert all(luhn_valid(c) for c in outs)
    assert all(o[-4:] == c[-4:] for o, c in zip(outs, cards.to_pylist(), strict=True))
    back, _ = fpe_decrypt(out, KEY, keep_last=4, luhn=True)
    assert back.to_pylist() == cards.to_pylist()


def _luhn_reference(card: str, key: bytes, keep_last: int, decrypt: bool = False) -> str:
    """The Luhn option by its definition, one value at a time, with libffx's FF1: the encrypted
    numerals but the last go through FF1, and the last is the digit (found by trying all ten)
    that makes the whole number pass Luhn; the separators stay where they are."""
    digits = [c for c in card if c.isdigit()]
    cut = len(digits) - keep_last
    head, tail = "".join(digits[: cut - 1]), "".join(digits[cut:])
    f = ffx.FF1(key, radix=10)
    head = f.decrypt(head, tweak=b"") if decrypt else f.encrypt(head, tweak=b"")
    (fixed,) = [d for d in "0123456789" if luhn_valid(head + d + tail)]
    it = iter(head + fixed + tail)
    return "".join(next(it) if c.isdigit() else c for c in card)


@pytest.mark.parametrize("keep_last", [0, 1, 4, 5])
def test_luhn_option_matches_libffx_with_the_digit_derived(keep_last):
    rng = np.random.default_rng(11)
    from raymask.loadtest.traffic import _cards

    cards = _cards(rng, 300).to_pylist()
    out, err = fpe_encrypt(pa.array(cards), KEY, keep_last=keep_last, luhn=True)
    assert not err.any()
    assert out.to_pylist() == [_luhn_reference(c, KEY, keep_last) for c in cards]
    back, _ = fpe_decrypt(out, KEY, keep_last=keep_last, luhn=True)
    assert back.to_pylist() == cards
    assert [_luhn_reference(c, KEY, keep_last, decrypt=True) for c in out.to_pylist()] == cards


def _all_luhn_valid(tail: str) -> list[str]:
    """Every Luhn-valid number of 6 free digits, one more digit, then `tail` (NumPy, by trying
    each of the ten digits for the seventh: independent of the kernel's digit table)."""

    def share(d: np.ndarray, pos: int) -> np.ndarray:
        return d if pos % 2 == 0 else np.where(d > 4, 2 * d - 9, 2 * d)

    k = len(tail)
    heads = np.arange(10**6)
    total = sum(share(np.full(1, int(c)), k - 1 - j) for j, c in enumerate(tail)) if k else 0
    for j in range(6):  # head digit j (from the left) sits k + 6 - j places from the right
        total = total + share(heads // 10 ** (5 - j) % 10, k + 6 - j)
    fixed = np.zeros(10**6, np.int64)
    for d in range(10):
        fixed[(total + share(np.full(1, d), k)) % 10 == 0] = d
    return [f"{h:06d}{d}{tail}" for h, d in zip(heads.tolist(), fixed.tolist(), strict=True)]


@pytest.mark.parametrize("tail", ["", "3"])
def test_luhn_option_is_a_permutation_of_the_luhn_valid_numbers(tail):
    """All 10^6 Luhn-valid numbers of 6 enciphered digits (the domain's minimum), the derived
    digit (not doubled, then doubled) and the tail map onto themselves, one to one."""
    nums = _all_luhn_valid(tail)
    assert all(luhn_valid("00000" + x) for x in nums[::997])  # (luhn_valid wants >= 12 digits)
    out, err = fpe_encrypt(pa.array(nums), KEY, keep_last=len(tail), luhn=True)
    assert not err.any()
    assert sorted(out.to_pylist()) == nums


def test_luhn_option_decrypts_only_luhn_valid_numbers():
    out, err = fpe_decrypt(pa.array(["4111 1111 1111 1112", "4111 1111 1111 1111"]), KEY, luhn=True)
    assert err.tolist() == [E_LUHN, 0] and out.to_pylist()[0] is None


def test_luhn_option_needs_the_domain_without_the_derived_digit():
    out, err = fpe_encrypt(pa.array(["1234566", "123455"]), KEY, luhn=True)  # both Luhn-valid
    assert err.tolist() == [0, E_SHORT]


def test_luhn_option_refuses_an_invalid_card():
    out, err = fpe_encrypt(pa.array(["4111 1111 1111 1112"]), KEY, luhn=True)
    assert err.tolist() == [E_LUHN] and out.to_pylist() == [None]


@pytest.mark.parametrize(
    ("value", "code", "opts"),
    [
        ("12345", E_SHORT, {}),  # 10^5 < 1,000,000: below the Rev. 1 minimum domain
        ("1234-5678", E_SHORT, {"keep_last": 4}),  # only 4 numerals left to encrypt
        ("no digits here", E_SHORT, {}),
        ("1" * 57, E_LONG, {"mode": "ff3-1"}),  # radix 10 FF3-1 allows at most 56 numerals
        ("1" * 129, E_LONG, {}),
    ],
)
def test_values_outside_the_domain_get_an_error_and_no_output(value, code, opts):
    out, err = fpe_encrypt(pa.array([value, "0123456789"]), KEY, **opts)
    assert err.tolist()[0] == code and out.to_pylist()[0] is None
    assert out.to_pylist()[1] is not None


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_nulls_types_chunks_and_empties(typ):
    arr = pa.array(["0123456789", None, "", "9876543210"], typ)
    out, err = fpe_encrypt(arr, KEY)
    assert out.type == typ
    assert out.to_pylist()[1] is None and out.to_pylist()[2] is None and err.tolist()[2] == E_SHORT
    chunked = pa.chunked_array([arr[:2], arr[2:]])
    out2, _ = fpe_encrypt(chunked, KEY)
    assert out2.to_pylist() == out.to_pylist()
    empty, err = fpe_encrypt(pa.array([], typ), KEY)
    assert len(empty) == 0 and len(err) == 0


def test_per_value_tweaks_change_the_output_and_still_decrypt():
    vals = pa.array(["0123456789"] * 3)
    tweaks = pa.array(["acct-1", "acct-2", "acct-1"])
    for mode in ("ff1", "ff3-1"):
        out, _ = fpe_encrypt(vals, KEY, tweak=tweaks, mode=mode)
        o = out.to_pylist()
        assert o[0] == o[2] != o[1]
        back, _ = fpe_decrypt(out, KEY, tweak=tweaks, mode=mode)
        assert back.to_pylist() == vals.to_pylist()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=ALPHABETS[62] + "-_ é", min_size=0, max_size=40), min_size=1, max_size=20
    ),
    st.sampled_from([10, 26, 36, 62]),
    st.sampled_from(["ff1", "ff3-1"]),
    st.binary(min_size=16, max_size=16),
)
def test_decrypt_inverts_encrypt(values, radix, mode, key):
    arr = pa.array(values)
    out, err = fpe_encrypt(arr, key, radix=radix, mode=mode, tweak=b"1234567")
    back, _ = fpe_decrypt(out, key, radix=radix, mode=mode, tweak=b"1234567")
    for v, o, b, e in zip(values, out.to_pylist(), back.to_pylist(), err.tolist(), strict=True):
        if e == 0:
            assert b == v and len(o) == len(v)
        else:
            assert o is None
