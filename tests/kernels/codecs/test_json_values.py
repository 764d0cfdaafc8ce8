"""Every scalar of NDJSON records, with its path: exactly what Python's json module sees."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels.codecs import json_values, ndjson

_KEYS = st.text(alphabet='ab.é"\\\n', min_size=0, max_size=4)
_SCALARS = st.one_of(
    st.text(max_size=12), st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(),
)  # fmt: skip
_JSON = st.recursive(
    _SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_KEYS, kids, max_size=4)),
    max_leaves=12,
)


def _leaves(v, path: list[str], out: list) -> None:  # noqa: ANN001
    if isinstance(v, dict):
        for k, x in v.items():
            _leaves(x, [*path, k], out)
    elif isinstance(v, list):
        for x in v:
            _leaves(x, path, out)
    elif isinstance(v, str):
        out.append((".".join(path), v))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        out.append((".".join(path), json.dumps(v)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(_KEYS, _JSON, max_size=5), min_size=1, max_size=5), st.booleans())
def test_scalars_and_paths_match_python_json(docs: list[dict], ascii_only: bool) -> None:
    raw = "".join(json.dumps(d, ensure_ascii=ascii_only) + "\n" for d in docs).encode()
    data = np.frombuffer(raw, np.uint8)
    starts, ends, _ = ndjson.split_records(data, 1)
    rec, vs, ve, vk = json_values.scalar_values(data, starts, ends)
    values = ndjson.extract(data, vs, ve, vk).to_pylist()
    paths = json_values.paths_at(data, starts, ends, rec, vs)
    want = []
    for i, d in enumerate(docs):
        out: list = []
        _leaves(d, [], out)
        want += [(i, p, v) for p, v in out]
    assert list(zip(rec.tolist(), paths, values, strict=True)) == want


def test_skip_spans_and_rewrite_keep_other_bytes():
    raw = b'{"a": "x", "b": {"c": "y"}, "d": 5}\n'
    data = np.frombuffer(raw, np.uint8)
    s, e = np.array([0]), np.array([len(raw) - 1])
    skip_s = np.array([[raw.index(b"{", 1)]])  # the whole object under b
    skip_e = np.array([[raw.index(b"}") + 1]])
    rec, vs, ve, vk = json_values.scalar_values(
        data, s, e, None, skip_s, skip_e, np.ones((1, 1), np.int8)
    )
    assert [raw[a:b] for a, b in zip(vs, ve, strict=True)] == [b'"x"', b"5"]
    rep = b'"Z"'
    out, ns, ne = json_values.rewrite(data, s, e, rec[:1], vs[:1], ve[:1], np.array([0, 3]),
                                      np.frombuffer(rep, np.uint8))  # fmt: skip
    assert out.tobytes() == b'{"a": "Z", "b": {"c": "y"}, "d": 5}\n'
    assert (ns.tolist(), ne.tolist()) == ([0], [len(out) - 1])
