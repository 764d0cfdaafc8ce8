"""NDJSON codec against Python's json module as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raymask.kernels.codecs import ndjson
from raymask.kernels.codecs.paths import build_tree
from raymask.kernels.codecs.spans import (
    K_ARRAY,
    K_FALSE,
    K_MISSING,
    K_NULL,
    K_NUMBER,
    K_OBJECT,
    K_STRING,
    K_TRUE,
)

E_SYNTAX, E_NOT_OBJECT, E_UTF8, E_DUP, E_DEPTH = 1, 2, 3, 4, 5

# policy fields: plain, nested, non-ASCII (escaped under ensure_ascii) and keys that json.dumps
# must escape ('"', backslash, tab)
PATHS = ["a", "b.c", "x.y.z", "naïve", 'q"uote\\', "tab\tkey", "😀"]
TREE = build_tree(PATHS)


def u8(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


def scan_one(line: bytes, tree=TREE) -> ndjson.Scan:
    """Scan `line` as one record (no split, so the record may hold any byte)."""
    return ndjson.scan(u8(line), np.array([0], np.int64), np.array([len(line)], np.int64), tree)


def column(data: np.ndarray, sc: ndjson.Scan, k: int) -> list:
    return ndjson.extract(data, sc.vstart[:, k], sc.vend[:, k], sc.vkind[:, k]).to_pylist()


# --- split_records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "records", "lines"),
    [
        (b'{"a":1}\n{"b":2}\n', [b'{"a":1}', b'{"b":2}'], [1, 2]),
        (b'{"a":1}\n\n{"b":2}\n', [b'{"a":1}', b'{"b":2}'], [1, 3]),  # blank line skipped, counted
        (b" \t\n\r\n{}\n", [b"{}"], [3]),  # whitespace-only lines (incl. CRLF) are blank
        (b"{}\n{}", [b"{}", b"{}"], [1, 2]),  # last line without newline
        (b"{}\n", [b"{}"], [1]),  # trailing newline: no empty record after it
        (b"{}\n\n\n", [b"{}"], [1]),  # trailing blank lines: none either
        (b"\n\n{}\n", [b"{}"], [3]),  # leading blank lines
        (b"{}\r\n[]\r\n", [b"{}\r", b"[]\r"], [1, 2]),  # CRLF: the CR stays (JSON whitespace)
        (b"", [], []),  # empty buffer
        (b"\n", [], []),
        (b"garbage\n", [b"garbage"], [1]),  # splitting does not validate
    ],
)
def test_split_records_skips_blank_lines_and_counts_from_one(buf, records, lines):
    data = u8(buf)
    starts, ends, nums = ndjson.split_records(data)
    assert [buf[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)] == records
    assert nums.tolist() == lines
    _, _, nums10 = ndjson.split_records(data, base_line=10)
    assert nums10.tolist() == [n + 9 for n in lines]


def _ref_split(buf: bytes, base: int) -> tuple[list[bytes], list[int], int]:
    """Records (non-blank lines), their line numbers, and the newlines, by bytes.split."""
    parts = buf.split(b"\n")
    recs = [(p, base + i) for i, p in enumerate(parts) if p.strip(b" \t\r")]
    return [p for p, _ in recs], [n for _, n in recs], buf.count(b"\n")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"\n", b" ", b"\t", b"\r", b"{}", b"x", b"\xff", b"\n\n", b'{"a": "0123456789abcdef"}']
        ),
        max_size=60,
    ),
    st.integers(0, 9),
    st.integers(0, 3),
)
def test_split_counted_matches_bytes_split_at_every_alignment(pieces, pad, base):
    # words of 8 bytes straddle newlines at every offset; `pad` shifts the data in memory
    buf = b"".join(pieces)
    data = np.frombuffer(b"#" * pad + buf, np.uint8)[pad:]
    starts, ends, nums, newlines = ndjson.split_counted(data, base)
    records, lines, want_newlines = _ref_split(buf, base)
    assert [buf[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)] == records
    assert nums.tolist() == lines
    assert newlines == want_newlines == ndjson.count_lines(data)
    assert [a.tolist() for a in ndjson.split_records(data, base)] == [
        starts.tolist(), ends.tolist(), nums.tolist()]  # fmt: skip


def test_split_counted_grows_past_its_first_guess():
    # the kernel's first guess is one record per 128 bytes: 5,000 two-byte records outgrow it
    buf = b"{}\n" * 5000
    starts, _, nums, newlines = ndjson.split_counted(np.frombuffer(buf, np.uint8), 1)
    assert len(starts) == 5000 and nums[-1] == 5000 and newlines == 5000


# --- scan + extract against json.loads -------------------------------------------------------

_KEYS = st.sampled_from(
    ["a", "b", "c", "x", "y", "z", "naïve", 'q"uote\\', "tab\tkey", "😀", "e"]
) | st.text(max_size=6)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**25), 10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(_KEYS, ch, max_size=3),
    max_leaves=8,
)


@st.composite
def documents(draw):
    """A random object that also holds some of the policy paths (possibly as containers)."""
    doc = draw(st.dictionaries(_KEYS, JSON_VALUES, max_size=5))
    for path in PATHS:
        if draw(st.booleans()):
            parts = path.split(".")
            node = doc
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = draw(st.dictionaries(_KEYS, JSON_VALUES, max_size=2))
                node = node[part]
            node[parts[-1]] = draw(JSON_VALUES)
    return doc


STYLES = st.fixed_dictionaries(
    {
        "ensure_ascii": st.booleans(),
        "separators": st.sampled_from([(",", ":"), (", ", ": ")]),
    }
)


def lookup(doc: dict, path: str):
    """(found, value) of a dotted path; only objects are walked (arrays are not)."""
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def expected_kind(found: bool, v) -> int:
    if not found:
        return K_MISSING
    if v is None:
        return K_NULL
    if v is True:
        return K_TRUE
    if v is False:
        return K_FALSE
    if isinstance(v, str):
        return K_STRING
    if isinstance(v, (int, float)):
        return K_NUMBER
    return K_OBJECT if isinstance(v, dict) else K_ARRAY


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(documents(), min_size=1, max_size=4), style=STYLES, crlf=st.booleans())
def test_scan_and_extract_agree_with_json_loads(docs, style, crlf):
    texts = [json.dumps(d, **style) for d in docs]
    buf = ("\r\n" if crlf else "\n").join(texts).encode("utf-8") + b"\n"
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    assert len(starts) == len(docs)
    sc = ndjson.scan(data, starts, ends, TREE)
    assert sc.err.tolist() == [0] * len(docs)
    for k, path in enumerate(PATHS):
        col = column(data, sc, k)
        for i, doc in enumerate(docs):
            found, v = lookup(doc, path)
            kind = expected_kind(found, v)
            assert sc.vkind[i, k] == kind, (path, doc)
            span = buf[sc.vstart[i, k] : sc.vend[i, k]].decode("utf-8")
            if kind in (K_MISSING, K_NULL):
                assert col[i] is None  # a missing field and a JSON null both come back null
            elif kind == K_STRING:
                assert col[i] == v  # unescaped, including \uXXXX surrogate pairs
                assert json.loads(span) == v
            else:
                # numbers, literals, objects and arrays: their JSON text exactly as written
                assert col[i] == span == json.dumps(v, **style)


def test_extract_kinds_and_values_on_a_hand_written_record():
    line = '{"a":"x\\u00e9\\n","b":{"c":-1.5e+3},"x":{"y":{"z":[1, {"k":null}]}},"naïve":true,"q\\"uote\\\\":false,"tab\\tkey":null}'.encode()
    data = u8(line)
    sc = scan_one(line)
    assert sc.err[0] == 0
    assert sc.vkind[0].tolist() == [K_STRING, K_NUMBER, K_ARRAY, K_TRUE, K_FALSE, K_NULL, K_MISSING]
    got = [column(data, sc, k)[0] for k in range(len(PATHS))]
    assert got == ["xé\n", "-1.5e+3", '[1, {"k":null}]', "true", "false", None, None]


def test_paths_do_not_descend_into_arrays_or_scalars():
    line = b'{"b":[{"c":1}],"x":{"y":5},"zz":{"a":1}}'
    sc = scan_one(line)
    assert sc.err[0] == 0 and (sc.vkind[0] == K_MISSING).all()


def test_lone_surrogate_escape_extracts_as_replacement_character():
    # valid JSON (RFC 8259 grammar allows it); Arrow strings must be UTF-8, so U+FFFD
    line = '{"a":"x\\ud800y","naïve":"\\udc00"}'.encode()
    sc = scan_one(line)
    assert sc.err[0] == 0
    data = u8(line)
    assert column(data, sc, 0) == ["x\ufffdy"] and column(data, sc, 3) == ["\ufffd"]


# --- escaped keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "paths", "field", "value"),
    [
        (b'{"\\u0065":1}', ["e"], "e", "1"),  # the whole key escaped
        (b'{"em\\u0061il":"x@y.z"}', ["email"], "email", "x@y.z"),  # one character escaped
        (b'{"\\u0045":1,"e":2}', ["e"], "e", "2"),  # escaped "E" is not "e"
        (b'{"na\\u00efve":"v"}', ["naïve"], "naïve", "v"),  # escaped non-ASCII
        (b'{"\\ud83d\\ude00":"v"}', ["😀"], "😀", "v"),  # surrogate pair
        (b'{"\\/":"v"}', ["/"], "/", "v"),  # escaped solidus
        (b'{"b":{"\\u0063":"v"}}', ["b.c"], "b.c", "v"),  # escaped nested key
        # long enough policy keys make room for a fully escaped key
        (
            b'{"\\u0065\\u006d\\u0061\\u0069\\u006c":"x"}',
            ["email", "a_much_longer_field"],
            "email",
            "x",
        ),
    ],
)
def test_escaped_keys_match_their_unescaped_field(line, paths, field, value):
    tree = build_tree(paths)
    sc = scan_one(line, tree)
    assert sc.err[0] == 0
    k = paths.index(field)
    assert column(u8(line), sc, k) == [value]


@pytest.mark.parametrize(
    "line",
    [
        b'{"\\u0065\\u006d\\u0061\\u0069\\u006c":"x@y.z"}',  # "email", every character escaped
        b'{"\\u0073\\u0065\\u0063\\u0072\\u0065\\u0074":"x@y.z"}',  # "secret"
    ],
    ids=["email", "secret"],
)
def test_fully_escaped_long_key_is_located(line):
    field = json.loads(line).popitem()[0]
    sc = scan_one(line, build_tree([field]))
    assert sc.err[0] == 0
    assert column(u8(line), sc, 0) == ["x@y.z"]


def test_fully_escaped_duplicate_of_a_policy_field_is_an_error():
    line = b'{"email":"masked","\\u0065\\u006d\\u0061\\u0069\\u006c":"clear@y.z"}'
    assert json.loads(line) == {"email": "clear@y.z"}  # what a last-wins consumer sees
    assert scan_one(line, build_tree(["email"])).err[0] == E_DUP


# --- validation against a strict oracle ------------------------------------------------------


class _Constant(ValueError):
    pass


def _raise(name):
    raise _Constant(name)


def oracle_valid(line: bytes) -> bool:
    """RFC 8259 object as Python sees it: strict UTF-8, json.loads without NaN/Infinity."""
    try:
        text = line.decode("utf-8")
        obj = json.loads(text, parse_constant=_raise)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return isinstance(obj, dict)


def _deep(levels: int) -> bytes:
    inner = levels - 1  # the record's own object is the first level
    return b'{"k":' + b"[" * inner + b"]" * inner + b"}"


INVALID = [
    (b'{"a":1,}', E_SYNTAX),  # trailing comma in an object
    (b'{"a":[1,]}', E_SYNTAX),  # trailing comma in an array
    (b"{'a':1}", E_SYNTAX),  # single quotes
    (b'{"a":NaN}', E_SYNTAX),  # NaN, which json.loads would take without parse_constant
    (b'{"a":Infinity}', E_SYNTAX),
    (b'{"a":-Infinity}', E_SYNTAX),
    (b'{"a":"abc}', E_SYNTAX),  # unclosed string
    (b'{"a":"abc', E_SYNTAX),
    (b'{"a":"a\tb"}', E_SYNTAX),  # raw control character in a string
    (b'{"a":"a\x00b"}', E_SYNTAX),
    (b'{"a":"\x1f"}', E_SYNTAX),
    (b'{"a":"a\nb"}', E_SYNTAX),  # raw newline (only reachable when scanning one record)
    (b'{"a":"\\x41"}', E_SYNTAX),  # bad escape
    (b'{"a":"\\\'"}', E_SYNTAX),
    (b'{"a":"\\U0041"}', E_SYNTAX),  # \U is not \u
    (b'{"a":"\\u12"}', E_SYNTAX),  # short \u escape
    (b'{"a":"\\u12g4"}', E_SYNTAX),
    (b'{"a":"\\"}', E_SYNTAX),  # escaped closing quote leaves the string open
    (b'{"a":"\xff"}', E_UTF8),  # invalid UTF-8 byte
    (b'{"a":"\xc0\xaf"}', E_UTF8),  # overlong 2-byte "/"
    (b'{"a":"\xe0\x80\xaf"}', E_UTF8),  # overlong 3-byte
    (b'{"a":"\xf0\x80\x80\xaf"}', E_UTF8),  # overlong 4-byte
    (b'{"a":"\x80"}', E_UTF8),  # lone continuation byte
    (b'{"a":"\xed\xa0\x80"}', E_UTF8),  # UTF-8-encoded surrogate
    (b'{"a":"\xf4\x90\x80\x80"}', E_UTF8),  # above U+10FFFF
    (b'{"a":"\xe2\x82"}', E_UTF8),  # truncated sequence before the closing quote
    (b'{"\xff":1}', E_UTF8),  # invalid UTF-8 in a key
    (b'{"a":1}\xff', E_SYNTAX),  # non-ASCII outside strings
    (b"[1,2]", E_NOT_OBJECT),  # top-level array
    (b'"a"', E_NOT_OBJECT),
    (b"1", E_NOT_OBJECT),
    (b"null", E_NOT_OBJECT),
    (b"\xef\xbb\xbf{}", E_NOT_OBJECT),  # byte order mark
    (b'{"a":1}{"b":2}', E_SYNTAX),  # two objects on one line
    (b'{"a":1} {"b":2}', E_SYNTAX),
    (b'{"a":01}', E_SYNTAX),  # leading zero
    (b'{"a":-01}', E_SYNTAX),
    (b'{"a":1.}', E_SYNTAX),  # no digit after the point
    (b'{"a":1.e5}', E_SYNTAX),
    (b'{"a":-}', E_SYNTAX),  # a lone minus
    (b'{"a":.5}', E_SYNTAX),  # no digit before the point
    (b'{"a":+1}', E_SYNTAX),
    (b'{"a":1e}', E_SYNTAX),
    (b'{"a":1e+}', E_SYNTAX),
    (b'{"a":0x10}', E_SYNTAX),
    (b'{"a":tru}', E_SYNTAX),
    (b'{"a":True}', E_SYNTAX),
    (b'{"a":nul}', E_SYNTAX),
    (b'{"a":truex}', E_SYNTAX),
    (b'{"a" 1}', E_SYNTAX),  # missing colon
    (b'{"a":}', E_SYNTAX),  # missing value
    (b'{"a":1 "b":2}', E_SYNTAX),  # missing comma
    (b'{"a":1', E_SYNTAX),  # unclosed object
    (b'{"a":[1}', E_SYNTAX),  # mismatched brackets
    (b'{"a":1}}', E_SYNTAX),
    (b"{a:1}", E_SYNTAX),  # unquoted key
    (b"{:1}", E_SYNTAX),
    (b"{,}", E_SYNTAX),
    (b"{", E_SYNTAX),
    (b"}", E_NOT_OBJECT),
    (b"{\x0c}", E_SYNTAX),  # form feed is not JSON whitespace
    (b'{"a":1}//c', E_SYNTAX),  # comments
    (b" ", E_SYNTAX),  # whitespace only
    (b"", E_SYNTAX),
]


@pytest.mark.parametrize(("line", "code"), INVALID, ids=[repr(x)[:40] for x, _ in INVALID])
def test_invalid_lines_are_rejected_like_the_oracle(line, code):
    assert not oracle_valid(line)
    sc = scan_one(line)
    assert sc.err[0] == code
    assert 0 <= sc.errpos[0] <= len(line)
    assert (sc.vkind[0] == K_MISSING).all()  # nothing located in a rejected record


VALID = [
    b"{}",
    b" { } ",
    b'\t{"a" : 1 }\r',
    b'{"a":"\\/\\b\\f\\n\\r\\t\\"\\\\"}',  # every short escape
    b'{"a":"\\u00e9\\uD83D\\uDE00"}',  # upper-case hex
    b'{"a":"\\ud800"}',  # lone surrogate escape: grammatical
    b'{"a":-0}',
    b'{"a":0}',
    '{"a":1E+2,"b":{"c":1e-2},"naïve":0.5}'.encode(),
    b'{"a":123456789012345678901234567890}',
    b'{"a":"\x7f"}',  # DEL is not a control character in JSON
    '{"a":"😀 Zoë"}'.encode(),
    b'{"":""}',
    b'{"zz":1,"zz":2}',  # a duplicate of a field outside the policy is not our concern
    b'{"a":[],"b":{},"x":[[],{}]}',
    _deep(512),  # nesting exactly at the limit
]


@pytest.mark.parametrize("line", VALID, ids=[repr(x)[:40] for x in VALID])
def test_valid_lines_are_accepted_like_the_oracle(line):
    assert oracle_valid(line)
    assert scan_one(line).err[0] == 0


@pytest.mark.parametrize(
    ("line", "code", "field"),
    [
        (_deep(513), E_DEPTH, -1),  # json.loads accepts 513 levels; we cap nesting at 512
        (
            b'{"a":1,"a":2}',
            E_DUP,
            0,
        ),  # json.loads keeps the last; we refuse a duplicate policy field
        (b'{"a":1,"\\u0061":2}', E_DUP, 0),  # also when spelt with an escape
        (b'{"b":{"c":1},"b":{"c":2}}', E_DUP, 1),  # nested policy field via a duplicate parent
        (b'{"a":{"k":1},"a":null}', E_DUP, 0),  # duplicate whose first value is a container
    ],
    ids=["depth-513", "dup", "dup-escaped", "dup-nested", "dup-container"],
)
def test_rejected_by_design_although_json_loads_accepts(line, code, field):
    assert oracle_valid(line)
    sc = scan_one(line)
    assert sc.err[0] == code
    assert sc.errfield[0] == field  # the leaf that occurs twice, -1 for other errors


def _has_duplicate_key(line: bytes) -> bool:
    dup = False

    def hook(pairs):
        nonlocal dup
        keys = [k for k, _ in pairs]
        dup = dup or len(keys) != len(set(keys))
        return dict(pairs)

    json.loads(line.decode("utf-8"), object_pairs_hook=hook)
    return dup


_MUTATION_BYTES = st.sampled_from(
    list(b'{}[]":,\\ \t\r\n0123456789-+.eEtrufalsn/u\x00\x7f\x80\xc3\xed\xf0\xff')
) | st.integers(0, 255)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=documents(),
    style=STYLES,
    op=st.sampled_from(["flip", "insert", "delete"]),
    where=st.floats(0, 1, exclude_max=True),
    byte=_MUTATION_BYTES,
)
def test_validation_agrees_with_oracle_on_mutated_lines(doc, style, op, where, byte):
    line = json.dumps(doc, **style).encode("utf-8")
    pos = int(where * len(line))
    if op == "flip":
        assume(line[pos] != byte)
        mutated = line[:pos] + bytes([byte]) + line[pos + 1 :]
    elif op == "insert":
        mutated = line[:pos] + bytes([byte]) + line[pos:]
    else:
        mutated = line[:pos] + line[pos + 1 :]
    valid = oracle_valid(mutated)
    err = int(scan_one(mutated).err[0])
    if err == E_DUP:
        # by design: json.loads accepts a duplicate key, we refuse a duplicate policy field
        assert valid and _has_duplicate_key(mutated), mutated
    else:
        assert (err == 0) == valid, (mutated, err)


# JSON-ish token soup: reaches structural combinations (empty containers, numbers next to
# brackets, escapes at string ends) that single-byte mutations of valid lines rarely produce
_TOKENS = [
    "{", "}", "[", "]", ":", ",", " ", "\t", '"a"', '"b"', '"c"', '"\\u0061"', '"\\ud800"', '"é"',
    '"', "\\", "\\u", "1", "-", "0", "01", ".", "5", "e", "+", "1.5", "-0", "1e5", "true", "tru",
    "null", '{"a":', '{"b":{"c":', "[[", "]]",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=14))
def test_validation_agrees_with_oracle_on_token_soup(tokens):
    line = "".join(tokens).encode("utf-8")
    valid = oracle_valid(line)
    err = int(scan_one(line).err[0])
    if err == E_DUP:
        assert valid and _has_duplicate_key(line), line
    else:
        assert (err == 0) == valid, (line, err)


# --- quote ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.text(), max_size=20))
def test_quote_round_trips_through_json_loads(values):
    off, out = ndjson.quote(pa.array(values, pa.string()))
    assert off[0] == 0 and len(off) == len(values) + 1
    texts = [out[a:b].tobytes() for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]
    for v, t in zip(values, texts, strict=True):
        if v is None:
            assert t == b"null"
        else:
            assert json.loads(t.decode("utf-8")) == v
            # and our own scanner accepts it as a value and extracts it unchanged
            line = b'{"a":' + t + b"}"
            sc = scan_one(line)
            assert sc.err[0] == 0 and column(u8(line), sc, 0) == [v]


def test_quote_raw_emits_text_as_is():
    values = pa.array(["12.5", "true", 'say "hi"', None, "[1,2]"], pa.large_string())
    raw = np.array([True, True, False, True, True])
    off, out = ndjson.quote(values, raw)
    texts = [out[a:b].tobytes() for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]
    assert texts == [b"12.5", b"true", b'"say \\"hi\\""', b"null", b"[1,2]"]  # null wins over raw


def test_quote_escapes_control_characters_json_style():
    off, out = ndjson.quote(pa.array(['\n\r\t\x00\x1f\x7f\\"é']))
    assert out.tobytes() == b'"\\n\\r\\t\\u0000\\u001f\x7f\\\\\\"\xc3\xa9"'


# --- splice and build_objects ----------------------------------------------------------------


def _replace_path(doc: dict, path: str, value) -> None:
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(documents(), min_size=1, max_size=4),
    style=STYLES,
    edited=st.lists(st.sampled_from(range(len(PATHS))), unique=True, max_size=len(PATHS)),
    emit=st.lists(st.booleans(), min_size=4, max_size=4),
    data_=st.data(),
)
def test_splice_replaces_only_the_edited_spans(docs, style, edited, emit, data_):
    buf = "\n".join(json.dumps(d, **style) for d in docs).encode("utf-8") + b"\n"
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    sc = ndjson.scan(data, starts, ends, TREE)
    n = len(docs)
    emit_arr = np.array(emit[:n])
    edit = np.zeros((n, len(edited)), np.bool_)
    reps, new_values = [], []
    for j, f in enumerate(edited):
        vals = data_.draw(st.lists(st.text(max_size=8), min_size=n, max_size=n))
        edit[:, j] = (sc.vkind[:, f] != K_MISSING) & np.array(
            data_.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        )
        reps.append(ndjson.quote(pa.array(vals, pa.string())))
        new_values.append(vals)
    out = ndjson.splice(data, sc, emit_arr, edited, edit, reps).to_pylist()
    assert len(out) == n
    for i, doc in enumerate(docs):
        if not emit_arr[i]:
            assert out[i] == b""
            continue
        # byte-exact: the original record with the edited spans swapped, then a newline
        spans = sorted(
            (int(sc.vstart[i, f]), int(sc.vend[i, f]), j)
            for j, f in enumerate(edited)
            if edit[i, j]
        )
        expected, p = b"", int(starts[i])
        for s, e, j in spans:
            a, b = reps[j][0][i], reps[j][0][i + 1]
            expected += buf[p:s] + reps[j][1][a:b].tobytes()
            p = e
        expected += buf[p : ends[i]] + b"\n"
        assert out[i] == expected
        # and it parses to the original object with those fields replaced
        want = json.loads(json.dumps(doc))
        for _s, _e, j in spans:
            _replace_path(want, PATHS[edited[j]], new_values[j][i])
        assert json.loads(out[i]) == want


def test_splice_keeps_untouched_bytes_on_a_hand_written_record():
    buf = b'{ "keep" : [1, 2],  "a" : "secret" , "b":{"c":42}}\n'
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    sc = ndjson.scan(data, starts, ends, TREE)
    reps = [ndjson.quote(pa.array(["***"])), ndjson.quote(pa.array(["0"]), np.array([True]))]
    out = ndjson.splice(data, sc, np.array([True]), [0, 1], np.ones((1, 2), np.bool_), reps)
    assert out.to_pylist() == [b'{ "keep" : [1, 2],  "a" : "***" , "b":{"c":0}}\n']
    assert out.type == pa.large_binary()


def _policy_only(doc: dict, replaced: dict[str, object]) -> dict:
    """The object build_objects should emit: present policy leaves, in policy order."""
    out: dict = {}
    for path in PATHS:
        found, v = lookup(doc, path)
        if not found:
            continue
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = replaced.get(path, v)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(documents(), min_size=1, max_size=4), style=STYLES, data_=st.data())
def test_build_objects_keeps_only_policy_fields(docs, style, data_):
    buf = "\n".join(json.dumps(d, **style) for d in docs).encode("utf-8") + b"\n"
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    sc = ndjson.scan(data, starts, ends, TREE)
    n = len(docs)
    edited = [1, 3]  # b.c and naïve are masked, the rest pass through
    edit = sc.vkind[:, edited] != K_MISSING
    vals = [data_.draw(st.lists(st.text(max_size=6), min_size=n, max_size=n)) for _ in edited]
    reps = [ndjson.quote(pa.array(v, pa.string())) for v in vals]
    emit = np.ones(n, np.bool_)
    emit[-1] = n == 1  # the last record is not emitted when there are several
    out = ndjson.build_objects(data, sc, TREE, emit, edited, edit, reps).to_pylist()
    for i, doc in enumerate(docs):
        if not emit[i]:
            assert out[i] == b""
            continue
        assert out[i].endswith(b"\n") and out[i].count(b"\n") == 1
        replaced = {PATHS[f]: vals[j][i] for j, f in enumerate(edited)}
        want = _policy_only(doc, replaced)
        got = json.loads(out[i])
        # same content, same key order (json.dumps keeps insertion order)
        assert json.dumps(got) == json.dumps(want)
        assert scan_one(out[i][:-1]).err[0] == 0  # and it is valid for our own scanner


def test_build_objects_on_a_hand_written_record():
    buf = b'{"zz":1,"x":{"y":{"z":"deep"},"w":2},"a":[1, 2],"b":{"d":3}}\n'
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    sc = ndjson.scan(data, starts, ends, TREE)
    out = ndjson.build_objects(data, sc, TREE, np.array([True]), [], np.zeros((1, 0), np.bool_), [])
    # policy order (a, b.c, x.y.z), original value bytes, and b left out: no field under it
    assert out.to_pylist() == [b'{"a":[1, 2],"x":{"y":{"z":"deep"}}}\n']


# --- the fast path of scan against the exact scanner ------------------------------------------
# `scan` runs `_scan_fast` and hands the records it cannot vouch for to `_scan`, the exact state
# machine that locates dead-letter reasons. Both must give the same spans, kinds, codes and
# error positions as `_scan` alone, on every record, in both modes.


def exact(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, tree, locate_only: bool):
    return ndjson._scan(
        data, starts, ends, tree.ch_start, tree.ch_count, tree.children, tree.key_start,
        tree.key_len, tree.keybytes, tree.leaf, len(tree.paths), tree.max_key_len, locate_only,
    )  # fmt: skip


def assert_same_as_exact(data: np.ndarray, starts, ends, tree, locate_only: bool) -> ndjson.Scan:
    sc = ndjson.scan(data, starts, ends, tree, locate_only)
    want = exact(data, starts, ends, tree, locate_only)
    got = (sc.vstart, sc.vend, sc.vkind, sc.err, sc.errpos, sc.errfield)
    if len(starts) == 0:
        return sc
    for name, g, w in zip(
        ("vstart", "vend", "vkind", "err", "errpos", "errfield"), got, want, strict=True
    ):
        bad = np.flatnonzero((g != w).reshape(len(starts), -1).any(axis=1))
        assert len(bad) == 0, (name, [data[starts[i] : ends[i]].tobytes() for i in bad[:3]])
    return sc


def _mutate(line: bytes, op: str, where: float, byte: int) -> bytes:
    pos = int(where * len(line))
    if op == "flip":
        return line[:pos] + bytes([byte]) + line[pos + 1 :]
    if op == "insert":
        return line[:pos] + bytes([byte]) + line[pos:]
    return line[:pos] + line[pos + 1 :]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(documents(), min_size=1, max_size=6),
    style=STYLES,
    muts=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "none", "none"]),
            st.floats(0, 1, exclude_max=True),
            _MUTATION_BYTES,
        ),
        min_size=6,
        max_size=6,
    ),
    locate_only=st.booleans(),
    newline_at_end=st.booleans(),
)
def test_fast_path_agrees_with_exact_scanner_on_mutated_batches(
    docs, style, muts, locate_only, newline_at_end
):
    # several records in one buffer, so the word loads of one record read into the next
    lines = [json.dumps(d, **style).encode("utf-8") for d in docs]
    lines = [
        line if op == "none" else _mutate(line, op, w, b)
        for line, (op, w, b) in zip(lines, muts[: len(lines)], strict=True)
    ]
    buf = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    data = u8(buf)
    ends = np.cumsum([len(x) + 1 for x in lines]) - 1
    starts = ends - np.array([len(x) for x in lines])
    assert_same_as_exact(data, starts, ends, TREE, locate_only)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=14), st.booleans())
def test_fast_path_agrees_with_exact_scanner_on_token_soup(tokens, locate_only):
    line = "".join(tokens).encode("utf-8")
    for buf in (line, line + b"\n" + line):  # alone, and followed by more bytes
        assert_same_as_exact(u8(buf), np.array([0]), np.array([len(line)]), TREE, locate_only)


@pytest.mark.parametrize("line", [x for x, _ in INVALID] + VALID + [_deep(513)])
@pytest.mark.parametrize("locate_only", [False, True])
def test_fast_path_agrees_with_exact_scanner_on_the_tables(line, locate_only):
    for buf in (line, line + b'\n{"a":"tail"}'):
        assert_same_as_exact(u8(buf), np.array([0]), np.array([len(line)]), TREE, locate_only)


@pytest.mark.parametrize("profile", ["payments", "iot", "logs"])
def test_fast_path_agrees_with_exact_scanner_on_traffic_with_broken_records(profile):
    from raymask.loadtest.traffic import generate_bytes

    data = u8(generate_bytes(profile, 3000, seed=7))
    starts, ends, _ = ndjson.split_records(data)
    paths = {
        "payments": ["account.id", "card.number", "customer.email", "amount", "ts", "note"],
        "iot": ["device.id", "owner.email", "gps", "net.ipv6", "battery_pct"],
        "logs": ["user.email", "request", "request.status", "message"],
    }[profile]
    tree = build_tree(paths) if profile != "logs" else build_tree(paths[:2] + paths[3:])
    # break one record in three: a random byte overwritten by a random or a JSON-ish byte
    rng = np.random.default_rng(3)
    buf = data.copy()
    hit = rng.random(len(starts)) < 1 / 3
    pos = starts[hit] + (rng.random(hit.sum()) * (ends[hit] - starts[hit])).astype(np.int64)
    soup = np.frombuffer(b'{}[]":,\\ \t0-.eE\x00\x80\xc3\xff', np.uint8)
    buf[pos] = np.where(
        rng.random(len(pos)) < 0.5, rng.choice(soup, len(pos)), rng.integers(0, 256, len(pos))
    )
    for locate_only in (False, True):
        clean = assert_same_as_exact(data, starts, ends, tree, locate_only)
        assert (clean.err == 0).all()
        broken = assert_same_as_exact(buf, starts, ends, tree, locate_only)
        if not locate_only:
            assert (broken.err != 0).sum() > len(starts) // 10  # the corpus does hold errors


def test_fast_path_vouches_for_valid_records():
    """The fast path must not quietly hand every record to the exact scanner."""
    from raymask.loadtest.traffic import generate_bytes

    lines = [
        b'{"a":"x\\u00e9\\n\\"","b":{"c":-1.5e+3},"x":{"y":{"z":[1, {"k":null}]}}}',
        '{ "naïve" : "Zoë 😀" ,\t"q\\"uote\\\\":[true,false,null] , "b":{} }\r'.encode(),
        b'{"\\u0061":1,"b":{"\\u0063":"v"},"tab\\tkey":{"a":[[],[{}]]}}',
        b"{}",
    ]
    buf = b"\n".join(lines) + b"\n" + generate_bytes("payments", 200, seed=2)
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    t = TREE
    args = (t.ch_start, t.ch_count, t.children, t.key_start, t.key_len, t.keybytes, t.leaf)
    for locate_only in (False, True):
        *_, redo = ndjson._scan_fast(data, starts, ends, *args, len(t.paths), t.max_key_len, locate_only)  # fmt: skip
        assert not redo.any()
        assert_same_as_exact(data, starts, ends, TREE, locate_only)


# --- word-at-a-time extract and quote against Python ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.none() | st.text(alphabet=st.sampled_from('ab"\\\n\x01é😀/ '), max_size=40) | st.text(),
        max_size=30,
    )
)
def test_quote_and_extract_round_trip_long_values_with_escapes_anywhere(values):
    off, out = ndjson.quote(pa.array(values, pa.string()))
    texts = [out[a:b].tobytes() for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]
    for t, v in zip(texts, values, strict=True):
        assert t == b"null" if v is None else json.loads(t) == v
    buf = b"".join(b'{"a":' + t + b"}\n" for t in texts)
    data = u8(buf)
    starts, ends, _ = ndjson.split_records(data)
    sc = assert_same_as_exact(data, starts, ends, TREE, False)
    assert column(data, sc, 0) == values


def test_extract_columns_match_json_loads_on_traffic():
    from raymask.loadtest.traffic import generate_bytes

    raw = generate_bytes("payments", 2000, seed=4)
    data = u8(raw)
    paths = ["event_id", "account.id", "customer.name", "amount", "note", "ts", "card"]
    tree = build_tree(paths)
    starts, ends, _ = ndjson.split_records(data)
    sc = assert_same_as_exact(data, starts, ends, tree, False)
    cols = ndjson.extract_columns(data, sc.vstart, sc.vend, sc.vkind)
    docs = [json.loads(x) for x in raw.splitlines()]
    for k, path in enumerate(paths):
        want = [lookup(d, path)[1] for d in docs]
        got = cols[k].to_pylist()
        if path == "amount":
            assert [float(g) for g in got] == want
        elif path == "card":  # an object: its JSON text
            assert [json.loads(g) for g in got] == want
        else:
            assert got == want
