"""Word-at-a-time helpers of the codec scanners against byte-at-a-time oracles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from raymask.kernels.codecs import _swar

pytestmark = pytest.mark.skipif(
    not _swar.LITTLE_ENDIAN,
    reason="big-endian host: the codecs never take the word-at-a-time path here (they keep "
    "their byte loops, which the codec tests cover), so there is nothing of it to test",
)


@njit(cache=True)
def _classes(buf, base):
    """Class mask of the words at buf[base + 8 * i] (unaligned loads when base is odd)."""
    n = (buf.shape[0] - base) // 8
    first = np.empty(n, np.int64)
    for i in range(n):
        m = _swar.string_stop(_swar.load_u64(buf, base + 8 * i))
        first[i] = _swar.first_byte(m)
    return first


def classes(words: bytes) -> np.ndarray:
    return _classes(np.frombuffer(b"?" + words, np.uint8), 1)


def _stop(b: int) -> bool:
    return b < 32 or b == 34 or b == 92 or b >= 128


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=50))
def test_string_stop_flags_exactly_the_first_stop_byte(chunks):
    # bytes near the class edges are drawn often: a borrow must never move the first flag
    first = classes(b"".join(chunks))
    for i, c in enumerate(chunks):
        stops = [j for j, b in enumerate(c) if _stop(b)]
        assert first[i] == (stops[0] if stops else 8), c


def test_string_stop_on_every_byte_in_every_lane():
    rows = []
    for lane in range(8):
        for b in range(256):
            w = bytearray(b"abcdefgh")
            w[lane] = b
            rows.append(bytes(w))
    first = classes(b"".join(rows))
    for k in range(len(rows)):
        lane, b = divmod(k, 256)
        assert first[k] == (lane if _stop(b) else 8)


@njit(cache=True)
def _copy(dst, o, src, s, n):
    _swar.copy(dst, o, src, s, n)


@settings(max_examples=300, deadline=None)
@given(
    src=st.binary(max_size=64),
    dst_len=st.integers(0, 80),
    data=st.data(),
)
def test_copy_moves_the_bytes_and_stays_inside_both_buffers(src, dst_len, data):
    n = data.draw(st.integers(0, min(len(src), dst_len)))
    s = data.draw(st.integers(0, len(src) - n))
    o = data.draw(st.integers(0, dst_len - n))
    # guard bytes around both buffers catch a write past dst or a read beyond src
    a = np.frombuffer(b"\xaa" * 16 + src + b"\xbb" * 16, np.uint8)
    d = np.full(dst_len + 32, 0xCC, np.uint8)
    _copy(d[16 : 16 + dst_len], o, a[16 : 16 + len(src)], s, n)
    assert d[16 + o : 16 + o + n].tobytes() == src[s : s + n]
    assert (d[:16] == 0xCC).all() and (d[16 + dst_len :] == 0xCC).all()
    # within dst, bytes before o are untouched; after o + n only the overshoot may change
    assert (d[16 : 16 + o] == 0xCC).all()


def test_word_loads_refuse_a_strided_view():
    from numba.core.errors import TypingError

    src = np.arange(32, dtype=np.uint8)
    with pytest.raises(TypingError):
        _copy(np.zeros(16, np.uint8), 0, src[::2], 0, 16)  # would be read as if contiguous
