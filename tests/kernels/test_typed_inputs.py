"""Text techniques take typed columns as their text: numbers, booleans, dates, timestamps."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raymask.kernels import fpe, mask, siv, tokenize

TYPED = [
    pa.array([4111111111111111, None, -42], pa.int64()),
    pa.array([12.5, None, 1e-7], pa.float64()),
    pa.array([True, None, False]),
    pa.array([dt.date(2026, 11, 23), None, dt.date(1999, 1, 2)]),
    pa.array(
        [dt.datetime(2026, 11, 23, 8, 0, 1), None, dt.datetime(2000, 2, 29)], pa.timestamp("ms")
    ),
]


@pytest.mark.parametrize("arr", TYPED, ids=lambda a: str(a.type))
def test_typed_columns_are_treated_as_their_text(arr):
    text = pc.cast(arr, pa.string())
    assert tokenize.tokenize(arr, b"k" * 32).equals(tokenize.tokenize(text, b"k" * 32))
    assert mask.mask(arr, keep_last=2)[0].equals(mask.mask(text, keep_last=2)[0])
    assert siv.encrypt_column(arr, b"k" * 32, 1).equals(siv.encrypt_column(text, b"k" * 32, 1))
    out, err = fpe.fpe_encrypt(arr, b"k" * 16)
    ref, ref_err = fpe.fpe_encrypt(text, b"k" * 16)
    assert out.equals(ref) and (err == ref_err).all()
    assert out.to_pylist()[1] is None  # nulls stay null
