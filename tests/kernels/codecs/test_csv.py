"""CSV codec (RFC 4180) against Python's csv module as the oracle."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymask.kernels.codecs import csv as csvc
from raymask.kernels.codecs.spans import K_MISSING, K_NULL, K_STRING, splice

E_COLUMNS, E_QUOTE, E_UTF8 = 1, 2, 3


def u8(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


def records(buf: bytes, **kw) -> tuple[list[bytes], list[int]]:
    starts, ends, lines = csvc.split_records(u8(buf), **kw)
    return [buf[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)], lines.tolist()


def read_csv(text: str, **kw) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), **kw))


def column(data: np.ndarray, sc, k: int) -> list:
    return csvc.extract(data, sc.vstart[:, k], sc.vend[:, k], sc.vkind[:, k]).to_pylist()


# --- split_records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "recs", "lines"),
    [
        (b"a,b\nc,d\n", [b"a,b", b"c,d"], [1, 2]),
        (b"a,b\r\nc,d\r\n", [b"a,b", b"c,d"], [1, 2]),  # CRLF: the CR is not part of the record
        (b'a,"x\ny",c\nd,e,f\n', [b'a,"x\ny",c', b"d,e,f"], [1, 3]),  # quoted LF: 1 record
        (b'a,"x\r\ny"\r\nb,c\r\n', [b'a,"x\r\ny"', b"b,c"], [1, 3]),  # quoted CRLF is kept verbatim
        (b'"a""\nb",c\n', [b'"a""\nb",c'], [1]),  # doubled quote does not close the cell
        (b'"",x\n', [b'"",x'], [1]),
        (b"a\n\nb\n", [b"a", b"b"], [1, 3]),  # blank line skipped but counted
        (b"a\r\n\r\nb\r\n", [b"a", b"b"], [1, 3]),  # blank CRLF line too
        (b"a\nb", [b"a", b"b"], [1, 2]),  # no newline after the last record
        (b"", [], []),
        (b" \n", [b" "], [1]),  # a space is a cell, not a blank line
    ],
)
def test_split_records_respects_quoted_newlines_and_crlf(buf, recs, lines):
    assert records(buf) == (recs, lines)
    assert records(buf, base_line=5)[1] == [n + 4 for n in lines]


def test_record_boundary_ignores_newlines_in_quotes():
    assert csvc.record_boundary(u8(b'a,b\nc,"d\ne')) == 4  # the second newline is quoted
    assert csvc.record_boundary(u8(b'a,"b\n')) == -1
    assert csvc.record_boundary(u8(b'a\nb,"c\nd"\n')) == 10


# --- scan / extract against csv.reader -------------------------------------------------------

CELL_CHARS = st.sampled_from(list(',"\n\r ;\tab') + ["é", "😀", "Ł", "日"]) | st.characters(
    exclude_categories=["Cs"]
)
CELLS = st.text(CELL_CHARS, max_size=8)


@st.composite
def tables(draw, min_cols=1):
    ncols = draw(st.integers(min_cols, 5))
    nrows = draw(st.integers(1, 6))
    crlf = draw(st.booleans())
    cells = CELLS if crlf else CELLS.map(lambda s: s.replace("\r", ""))
    rows = draw(
        st.lists(st.lists(cells, min_size=ncols, max_size=ncols), min_size=nrows, max_size=nrows)
    )
    return [f"c{i}" for i in range(ncols)], rows, "\r\n" if crlf else "\n"


def write_csv(header: list[str], rows: list[list[str]], term: str) -> bytes:
    """csv.writer with QUOTE_MINIMAL; with an LF terminator a bare CR would not be quoted, so
    `tables` leaves CR out of cells in that case."""
    out = io.StringIO(newline="")
    w = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator=term)
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue().encode("utf-8")


def expected_cell(cell: str, ncols: int) -> str | None:
    # csv.writer writes '' unquoted (our null) except as the only cell of a row, where it
    # writes "" so the row is not blank
    return None if cell == "" and ncols > 1 else cell


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), pick=st.data())
def test_scan_and_extract_agree_with_csv_reader(table, pick):
    header, rows, term = table
    buf = write_csv(header, rows, term)
    assert read_csv(buf.decode()) == [header, *rows]  # the oracle round-trips the table
    data = u8(buf)
    starts, ends, _ = csvc.split_records(data)
    assert len(starts) == len(rows) + 1
    assert csvc.parse_header(buf[starts[0] : ends[0]]) == header
    # policy fields: a random subset in a random order, plus a name not in the header
    fields = pick.draw(st.permutations(header)).copy()[: pick.draw(st.integers(1, len(header)))]
    fields.append("absent")
    sc = csvc.scan(data, starts[1:], ends[1:], header, fields)
    assert sc.err.tolist() == [0] * len(rows)
    ncols = len(header)
    for k, f in enumerate(fields):
        col = column(data, sc, k)
        if f == "absent":
            assert col == [None] * len(rows) and (sc.vkind[:, k] == K_MISSING).all()
            continue
        j = header.index(f)
        want = [expected_cell(r[j], ncols) for r in rows]
        assert col == want
        assert sc.vkind[:, k].tolist() == [K_NULL if w is None else K_STRING for w in want]


@pytest.mark.parametrize(
    ("line", "cells"),
    [
        (b"a,b,c", ["a", "b", "c"]),
        (b",,", [None, None, None]),  # empty unquoted cells are null
        (b'"","",""', ["", "", ""]),  # "" is the empty string
        (b'"a""b",,""', ['a"b', None, ""]),
        (b'"x,y","line\nbreak","\xc3\xa9"', ["x,y", "line\nbreak", "é"]),
        (b" a , b ,c ", [" a ", " b ", "c "]),  # spaces are data
        (b'"""",",",""""""', ['"', ",", '""']),
    ],
)
def test_cells_unquote_like_csv_reader(line, cells):
    sc = csvc.scan(u8(line), np.array([0]), np.array([len(line)]), ["a", "b", "c"], ["a", "b", "c"])
    assert sc.err[0] == 0
    assert [column(u8(line), sc, k)[0] for k in range(3)] == cells
    assert read_csv(line.decode())[0] == ["" if c is None else c for c in cells]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"a,b", E_COLUMNS),  # too few cells
        (b"a,b,c,d", E_COLUMNS),  # too many
        (b"a,b,c,", E_COLUMNS),  # a trailing delimiter opens a fourth (null) cell
        (b"", E_COLUMNS),  # an empty record is one null cell
        (b'a,b"x,c', E_QUOTE),  # stray quote inside an unquoted cell
        (b'a,b",c', E_QUOTE),
        (b'"a"b,c,d', E_QUOTE),  # text after the closing quote
        (b'"a" ,b,c', E_QUOTE),  # even a space
        (b'"abc,d,e', E_QUOTE),  # unclosed quote
        (b'a,b,"c', E_QUOTE),
        (b'a,b,"c""', E_QUOTE),  # the doubled quote leaves the cell open
        (b"a,b,\xff", E_UTF8),  # invalid UTF-8
        (b"a,\xc0\xaf,c", E_UTF8),  # overlong
        (b"a,\xed\xa0\x80,c", E_UTF8),  # encoded surrogate
        (b"a,b,\xe2\x82", E_UTF8),  # truncated at the end of the record
    ],
)
def test_malformed_records_get_error_codes(line, code):
    sc = csvc.scan(u8(line), np.array([0]), np.array([len(line)]), ["a", "b", "c"], ["a", "c"])
    assert sc.err[0] == code and code in csvc.ERRORS
    assert 0 <= sc.errpos[0] <= len(line)
    assert (sc.vkind[0] == K_MISSING).all()  # nothing located in a rejected record


def test_one_bad_record_does_not_affect_its_neighbours():
    buf = b'a,b\n1,2\n3,"4\n5,6\n'
    data = u8(buf)
    starts, ends, lines = csvc.split_records(data)
    # the unclosed quote swallows the rest of the buffer into one record
    assert lines.tolist() == [1, 2, 3]
    sc = csvc.scan(data, starts[1:], ends[1:], ["a", "b"], ["b"])
    assert sc.err.tolist() == [0, E_QUOTE]
    assert column(data, sc, 0) == ["2", None]


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (b"a,b,c\n", ["a", "b", "c"]),
        (b'"na,me","q""uote",\xc3\xa9\r\n', ["na,me", 'q"uote', "é"]),
        (b"single", ["single"]),
    ],
)
def test_parse_header(line, names):
    assert csvc.parse_header(line) == names


def test_other_delimiter_and_quote_char():
    buf = b"a;b\n'x;y';'it''s'\n"
    data = u8(buf)
    starts, ends, _ = csvc.split_records(data, quote_char="'")
    sc = csvc.scan(
        data, starts[1:], ends[1:], ["a", "b"], ["a", "b"], delimiter=";", quote_char="'"
    )
    assert sc.err[0] == 0
    got = [
        csvc.extract(
            data, sc.vstart[:, k], sc.vend[:, k], sc.vkind[:, k], quote_char="'"
        ).to_pylist()
        for k in (0, 1)
    ]
    assert got == [["x;y"], ["it's"]]


# --- quote -----------------------------------------------------------------------------------


def _texts(off: np.ndarray, out: np.ndarray) -> list[bytes]:
    return [out[a:b].tobytes() for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.none() | CELLS, max_size=15), delimiter=st.sampled_from([",", ";", "\t"]))
def test_quote_round_trips_through_csv_reader(values, delimiter):
    off, out = csvc.quote(pa.array(values, pa.string()), delimiter)
    for v, t in zip(values, _texts(off, out), strict=True):
        if v is None:
            assert t == b""  # null is the empty cell
            continue
        assert read_csv(t.decode("utf-8"), delimiter=delimiter) == [[v]]
        if v:
            # quoted exactly when csv.writer (QUOTE_MINIMAL, CRLF) quotes
            w = io.StringIO(newline="")
            csv.writer(w, delimiter=delimiter, lineterminator="\r\n").writerow([v])
            assert t.decode("utf-8") + "\r\n" == w.getvalue()
        else:
            assert t == b'""'  # the empty string stays distinct from null


# --- select_columns (drop mode) --------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(min_cols=2), pick=st.data())
def test_select_columns_parses_to_the_selected_columns(table, pick):
    header, rows, term = table
    buf = write_csv(header, rows, term)
    data = u8(buf)
    starts, ends, _ = csvc.split_records(data)
    fields = pick.draw(st.permutations(header))
    sc = csvc.scan(data, starts[1:], ends[1:], header, fields)
    n = len(rows)
    # keep at least two columns (one column holding a null is a separate, known case below)
    columns = pick.draw(
        st.lists(st.sampled_from(range(len(fields))), unique=True, min_size=2, max_size=len(fields))
    )
    edit = np.zeros((n, len(columns)), np.bool_)
    reps, new = [], []
    for j in range(len(columns)):
        vals = pick.draw(st.lists(st.none() | CELLS, min_size=n, max_size=n))
        edit[:, j] = pick.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        reps.append(csvc.quote(pa.array(vals, pa.string())))
        new.append(vals)
    emit = np.array(pick.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    out = csvc.select_columns(data, sc, columns, emit, edit, reps).to_pylist()
    assert len(out) == n
    for i, row in enumerate(rows):
        if not emit[i]:
            assert out[i] == b""
            continue
        want = []
        for j, k in enumerate(columns):
            if edit[i, j]:
                want.append(new[j][i] or "")  # null writes the empty cell
            else:
                want.append(row[header.index(fields[k])])
        assert read_csv(out[i].decode("utf-8")) == [want]
        # byte-exact: unedited cells keep their bytes (quoting included), edited ones are
        # the quote() text, joined by the delimiter
        parts = []
        for j, k in enumerate(columns):
            if edit[i, j]:
                a, b = reps[j][0][i], reps[j][0][i + 1]
                parts.append(reps[j][1][a:b].tobytes())
            else:
                parts.append(buf[sc.vstart[i, k] : sc.vend[i, k]])
        assert out[i] == b",".join(parts) + b"\n"


@pytest.mark.parametrize("how", ["select_columns", "splice_null"])
def test_single_null_cell_record_is_not_written_as_a_blank_line(how):
    if how == "select_columns":
        # drop mode keeping only column b, whose cell is empty (null) in the second record
        buf = b"a,b\n1,x\n2,\n"
        header, fields, keep = ["a", "b"], ["b"], [0]
    else:
        # one-column file whose value is redacted to null and spliced back
        buf = b"ssn\n123\n456\n"
        header, fields, keep = ["ssn"], ["ssn"], [0]
    data = u8(buf)
    starts, ends, _ = csvc.split_records(data)
    sc = csvc.scan(data, starts[1:], ends[1:], header, fields)
    assert sc.err.tolist() == [0, 0]
    emit = np.ones(2, np.bool_)
    if how == "select_columns":
        out = csvc.select_columns(
            data,
            sc,
            keep,
            emit,
            np.zeros((2, 1), np.bool_),
            [csvc.quote(pa.array([None, None], pa.string()))],
        )
    else:
        reps = [csvc.quote(pa.array([None, None], pa.string()))]
        # the CSV format writes an empty record as "" (CsvFormat.emit passes empty_as)
        out = splice(data, sc, emit, keep, np.ones((2, 1), np.bool_), reps, empty_as=b'""')
    written = b"".join(out.to_pylist())
    # two records in, two records out: re-reading must find both
    assert len(csvc.split_records(u8(written))[0]) == 2
    assert len(read_csv(written.decode())) == 2
