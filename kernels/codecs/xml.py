"""XML codec: records are the elements at a configured path; a Numba tokenizer locates each
record's byte span and each policy field's text span, and masked values are spliced back, so
every byte the policy does not touch (prolog, other elements, comments, whitespace, quoting,
namespace prefixes) stays byte-identical.

Framing (the chunk boundary is always the start of a record element):
- the prolog is everything before the first record (XML declaration, root and ancestor start
  tags, header elements such as a pain.001 `GrpHdr`); it is read once and written once;
- record i is its element plus the bytes up to the next record (its "tail": whitespace, and
  where records are grouped, the end and start tags of the groups); the last record's tail is
  the document's epilogue. So a chunk never splits a record and the document is never held
  whole in memory.

Fields are addressed relative to the record element: `Cdtr/Nm` (an element's text),
`@deviceId` (an attribute of the record), `Meter/@unit` (an attribute of a child). Steps match by
local name, so `p:Nm` and `Nm` both match `<Nm>` in any namespace (the record path's prefixes
are checked against the document's declarations once, in the prolog). An element with child
elements is a value of kind object; `<Nm/>` is null. A field that occurs twice in a record
sends the record to the dead letters (masking one occurrence would let the other through).

Security: a DOCTYPE (and so any entity declaration, external entity or billion-laughs
expansion) is refused; only the five predefined entities and character references are read,
and nothing is ever fetched. The records are checked for well-formedness (tag nesting and
names, attribute syntax, references, UTF-8, control characters) by the same scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import string_array, string_buffers, string_columns
from raymask.kernels.codecs._utf8 import seq_len
from raymask.kernels.codecs.spans import (
    K_MISSING,
    K_NULL,
    K_OBJECT,
    K_STRING,
    Scan,
    pack_replacements,
)

__all__ = [
    "ERRORS",
    "XmlError",
    "XmlLayout",
    "build_layout",
    "find_prolog",
    "record_spans",
    "root_is_record",
    "check_prolog",
    "boundary",
    "split",
    "scan",
    "extract_columns",
    "escape",
    "unknown_spans",
    "unescape_spans",
    "rewrite",
    "drop_unknown",
    "emit",
    "tail",
    "replay_document",
]

E_SYNTAX, E_UTF8, E_DUP, E_UNCLOSED, E_DTD, E_ENTITY, E_TAG, E_DEPTH = 1, 2, 3, 4, 5, 6, 7, 8
ERRORS = {
    E_SYNTAX: "malformed XML",
    E_UTF8: "invalid UTF-8 or a character XML does not allow",
    E_DUP: "field occurs twice",
    E_UNCLOSED: "record element is not closed",
    E_DTD: "DOCTYPE or entity declaration refused (external entities, entity expansion)",
    E_ENTITY: "undefined entity or bad character reference (only &lt; &gt; &amp; &apos; &quot; and &#...; are read)",
    E_TAG: "end tag does not match its start tag",
    E_DEPTH: "elements nested deeper than 256 levels",
}
MAX_DEPTH = 256
MAX_ATTRS = 256  # per element


class XmlError(ValueError):
    """The document cannot be read safely (a DOCTYPE, or a prolog that is not XML)."""


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class XmlLayout:
    """The record path and the field paths as arrays the Numba scanner walks.

    Node 0 is the record element; a node is an element step or an attribute (`@name`) step."""

    record: tuple[str, ...]  # local names of the record path's steps
    rec_names: np.ndarray  # uint8, the steps' local names back to back
    rec_off: np.ndarray  # int64 (len(record) + 1)
    paths: tuple[str, ...]
    parent: np.ndarray
    is_attr: np.ndarray
    leaf: np.ndarray  # node -> leaf index or -1
    names: np.ndarray  # uint8: node names back to back (local names; raw for attributes)
    name_off: np.ndarray


def _local(step: str) -> str:
    return step.split(":", 1)[1] if ":" in step else step


def build_layout(record: str, paths: tuple[str, ...] | list[str]) -> XmlLayout:
    """Layout for a record path (`Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf`) and fields."""
    rec = tuple(_local(s) for s in record.strip("/").split("/"))
    parent, is_attr, leaf, names = [-1], [False], [-1], [""]
    for li, path in enumerate(paths):
        node = 0
        steps = path.split("/")
        for d, step in enumerate(steps):
            attr = step.startswith("@")
            if attr and d != len(steps) - 1:
                raise ValueError(f"field {path}: an attribute step must come last")
            name = step[1:] if attr else _local(step)
            if attr and ":" in name and not name.startswith("xmlns"):
                name = _local(name)
            found = next(
                (c for c in range(len(parent)) if parent[c] == node and names[c] == name and is_attr[c] == attr),
                -1,
            )  # fmt: skip
            if found < 0:
                found = len(parent)
                parent.append(node)
                is_attr.append(attr)
                leaf.append(-1)
                names.append(name)
            elif d == len(steps) - 1:
                if leaf[found] >= 0 or attr:
                    raise ValueError(f"field {path}: overlaps another field")
            elif leaf[found] >= 0 and not steps[d + 1].startswith("@"):
                raise ValueError(f"field {path}: overlaps another field")
            node = found
        # an element field may have attribute fields, never element fields below it
        if any(parent[c] == node and not is_attr[c] for c in range(len(parent))):
            raise ValueError(f"field {path}: overlaps another field")
        leaf[node] = li
    enc = [n.encode() for n in names]
    off = np.zeros(len(enc) + 1, np.int64)
    off[1:] = np.cumsum([len(e) for e in enc])
    renc = [r.encode() for r in rec]
    roff = np.zeros(len(renc) + 1, np.int64)
    roff[1:] = np.cumsum([len(e) for e in renc])
    return XmlLayout(
        record=rec,
        rec_names=np.frombuffer(b"".join(renc) + b"\0", np.uint8).copy(),
        rec_off=roff,
        paths=tuple(paths),
        parent=np.array(parent, np.int64),
        is_attr=np.array(is_attr, np.bool_),
        leaf=np.array(leaf, np.int64),
        names=np.frombuffer(b"".join(enc) + b"\0", np.uint8).copy(),
        name_off=off,
    )


# ---------------------------------------------------------------- tokenizer pieces


@njit(cache=True, inline="always")
def _is_ws(c):
    return c == 32 or c == 9 or c == 10 or c == 13


@njit(cache=True, inline="always")
def _name_end(data, p, end):
    """End of the name starting at p (stops at whitespace, '/', '>', '=', quotes, '<')."""
    q = p
    while q < end:
        c = data[q]
        if _is_ws(c) or c == 47 or c == 62 or c == 61 or c == 34 or c == 39 or c == 60:
            break
        q += 1
    return q


@njit(cache=True)
def _find(data, p, end, a, b, c):
    """Position of the 3-byte (or 2-byte when c == 0) sequence a b c at or after p; -1 if none."""
    q = p
    while q < end:
        if data[q] == a and q + 1 < end and data[q + 1] == b:
            if c == 0:
                return q
            if q + 2 < end and data[q + 2] == c:
                return q
        q += 1
    return -1


@njit(cache=True, inline="always")
def _local_eq(data, s, e, names, ns, ne):
    """Does the qualified name data[s:e] have the local name names[ns:ne]?"""
    ls = s
    for q in range(s, e):
        if data[q] == 58:  # ':'
            ls = q + 1
    if e - ls != ne - ns:
        return False
    for k in range(ne - ns):
        if data[ls + k] != names[ns + k]:
            return False
    return True


@njit(cache=True, inline="always")
def _raw_eq(data, s1, e1, s2, e2):
    if e1 - s1 != e2 - s2:
        return False
    for k in range(e1 - s1):
        if data[s1 + k] != data[s2 + k]:
            return False
    return True


@njit(cache=True)
def _skip_markup(data, p, end):
    """data[p] is '<' and not a start or end tag: the position after the comment, CDATA section,
    processing instruction or declaration (end when unterminated)."""
    if p + 3 < end and data[p + 1] == 33 and data[p + 2] == 45 and data[p + 3] == 45:
        q = _find(data, p + 4, end, 45, 45, 62)
        return end if q < 0 else q + 3
    if p + 8 < end and data[p + 1] == 33 and data[p + 2] == 91:  # <![CDATA[
        q = _find(data, p + 9, end, 93, 93, 62)
        return end if q < 0 else q + 3
    if p + 1 < end and data[p + 1] == 63:
        q = _find(data, p + 2, end, 63, 62, 0)
        return end if q < 0 else q + 2
    q = p + 1
    while q < end and data[q] != 62:
        q += 1
    return min(q + 1, end)


@njit(cache=True)
def _tag_end(data, p, end):
    """data[p] is '<' of a start or end tag: (position after '>', self-closing); end when cut."""
    q = p + 1
    while q < end:
        c = data[q]
        if c == 34 or c == 39:
            q += 1
            while q < end and data[q] != c:
                q += 1
        elif c == 62:
            return q + 1, data[q - 1] == 47
        q += 1
    return end, False


@njit(cache=True)
def _records(data, rec_names, rec_off, d0, stop_at_first):
    """Record element starts (and the element ends) in a buffer whose open elements at data[0]
    are the record path's first `d0` steps. Lenient: well-formedness is the scan's job; an end
    tag with the record's own name closes a record whatever the nesting inside, so one broken
    record does not swallow the rest."""
    n = data.shape[0]
    L = rec_off.shape[0] - 1
    cap = 16
    starts = np.empty(cap, np.int64)
    eends = np.empty(cap, np.int64)
    r = 0
    d = d0
    m = d0
    p = 0
    while p < n:
        if data[p] != 60:
            p += 1
            continue
        if p + 1 < n and (data[p + 1] == 33 or data[p + 1] == 63):
            p = _skip_markup(data, p, n)
            continue
        q, empty = _tag_end(data, p, n)
        if p + 1 < n and data[p + 1] == 47:  # end tag
            d -= 1
            if m > d:
                m = d if d > 0 else 0
            p = q
            continue
        ns = p + 1
        ne = _name_end(data, ns, n)
        is_rec = False
        if m == d and d < L and _local_eq(data, ns, ne, rec_names, rec_off[d], rec_off[d + 1]):
            if d == L - 1:
                is_rec = True
            elif not empty:
                m += 1
        if not is_rec:
            if not empty:
                d += 1
            p = q
            continue
        # a record element: find its end
        if r == cap:
            cap *= 2
            s2 = np.empty(cap, np.int64)
            e2 = np.empty(cap, np.int64)
            s2[:r] = starts[:r]
            e2[:r] = eends[:r]
            starts, eends = s2, e2
        starts[r] = p
        ee = -1
        if empty:
            ee = q
        else:
            depth = 1
            t = q
            while t < n:
                if data[t] != 60:
                    t += 1
                    continue
                if t + 1 < n and (data[t + 1] == 33 or data[t + 1] == 63):
                    t = _skip_markup(data, t, n)
                    continue
                u, emp = _tag_end(data, t, n)
                if t + 1 < n and data[t + 1] == 47:
                    depth -= 1
                    xs = t + 2
                    xe = _name_end(data, xs, n)
                    if depth == 0 or _raw_eq(data, xs, xe, ns, ne):
                        ee = u
                        break
                elif not emp:
                    depth += 1
                t = u
        eends[r] = ee
        r += 1
        if stop_at_first or ee < 0:
            break
        p = ee
    return starts[:r], eends[:r]


def find_prolog(data: np.ndarray, lay: XmlLayout) -> int:
    """Start of the first record in a document's first bytes (-1 when none yet)."""
    s, _ = _records(data, lay.rec_names, lay.rec_off, 0, True)
    return int(s[0]) if len(s) else -1


def record_spans(data: np.ndarray, lay: XmlLayout) -> tuple[np.ndarray, np.ndarray]:
    """(element starts, element ends) of every record in a whole document, its path matched
    from the root; an end of -1 marks a record element that is not closed (the last found)."""
    s, e = _records(data, lay.rec_names, lay.rec_off, 0, False)
    return s.astype(np.int64), e.astype(np.int64)


@njit(cache=True)
def _roots(data, starts, ends, name, nlen):
    n = starts.shape[0]
    ok = np.zeros(n, np.bool_)
    for r in range(n):
        p = starts[r]
        e = ends[r]
        while p < e:
            if data[p] != 60:
                p += 1
                continue
            if p + 1 < e and data[p + 1] == 63:  # <?xml ...?> and other PIs
                p = _skip_markup(data, p, e)
                continue
            if p + 3 < e and data[p + 1] == 33 and data[p + 2] == 45 and data[p + 3] == 45:
                p = _skip_markup(data, p, e)  # a comment
                continue
            if p + 1 < e and data[p + 1] != 33 and data[p + 1] != 47:
                ne = _name_end(data, p + 1, e)
                ok[r] = _local_eq(data, p + 1, ne, name, 0, nlen)
            break
    return ok


def root_is_record(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, lay: XmlLayout
) -> np.ndarray:
    """Per span, is its first element (after an XML declaration, comments, whitespace) a record
    element (the record path's last step, by local name)? For values that each hold one record:
    a value rooted elsewhere would otherwise be scanned as a record whose fields are all missing,
    and pass through unmasked."""
    last = lay.record[-1].encode()
    return _roots(data, starts, ends, np.frombuffer(last + b"\0", np.uint8), len(last))


_DECL = re.compile(rb"xmlns(?::([A-Za-z_][\w.\-]*))?\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")


def check_prolog(prolog: bytes, namespaces: dict[str, str], record: str) -> None:
    """XmlError when the prolog holds a DOCTYPE or entity declaration, or does not declare a
    namespace the record path names. (Never quotes the document.)"""
    if b"<!DOCTYPE" in prolog or b"<!ENTITY" in prolog or b"<!doctype" in prolog.lower():
        raise XmlError(
            "DOCTYPE refused: raymask reads no DTD, so no external entity and no entity "
            "expansion (billion laughs) can apply; send the document without it"
        )
    uris = {(m.group(2) if m.group(2) is not None else m.group(3)) for m in _DECL.finditer(prolog)}
    for step in record.strip("/").split("/"):
        if ":" in step:
            p = step.split(":", 1)[0]
            uri = namespaces.get(p)
            if uri is not None and uri.encode() not in {u for u in uris if u is not None}:
                raise XmlError(
                    f"the document does not declare the namespace of prefix {p} that the record path uses"
                )


def boundary(data: np.ndarray, lay: XmlLayout) -> int:
    """The start of the last record in `data` (the records before it are whole): -1 if none."""
    s, _ = _records(data, lay.rec_names, lay.rec_off, len(lay.record) - 1, False)
    return int(s[-1]) if len(s) > 1 else -1


def split(
    data: np.ndarray, base_line: int, lay: XmlLayout
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, lines): record i runs from its element's start to the next record's
    start (the last to the end of `data`); lines are those of the element starts."""
    s, _ = _records(data, lay.rec_names, lay.rec_off, len(lay.record) - 1, False)
    n = len(s)
    ends = np.empty(n, np.int64)
    ends[:-1] = s[1:]
    if n:
        ends[-1] = len(data)
    nl = np.flatnonzero(data == 10)
    lines = base_line + np.searchsorted(nl, s)
    return s.astype(np.int64), ends, lines.astype(np.int64)


# ---------------------------------------------------------------- scan


@njit(cache=True)
def _ref_end(data, p, end):
    """data[p] is '&': the position after a valid reference, or -1."""
    q = p + 1
    while q < end and q - p < 12 and data[q] != 59:
        q += 1
    if q >= end or data[q] != 59:
        return -1
    ln = q - p - 1
    if ln >= 2 and data[p + 1] == 35:  # character reference
        v = 0
        if data[p + 2] == 120:
            if ln < 3:
                return -1
            for k in range(p + 3, q):
                c = data[k]
                if 48 <= c <= 57:
                    v = v * 16 + c - 48
                elif 97 <= c <= 102:
                    v = v * 16 + c - 87
                elif 65 <= c <= 70:
                    v = v * 16 + c - 55
                else:
                    return -1
        else:
            for k in range(p + 2, q):
                c = data[k]
                if 48 <= c <= 57:
                    v = v * 10 + c - 48
                else:
                    return -1
        ok = v == 9 or v == 10 or v == 13 or (32 <= v <= 0xD7FF) or (0xE000 <= v <= 0xFFFD)
        ok = ok or (0x10000 <= v <= 0x10FFFF)
        return q + 1 if ok else -1
    a = data[p + 1]
    if ln == 2 and (a == 108 or a == 103) and data[p + 2] == 116:  # lt gt
        return q + 1
    if ln == 3 and a == 97 and data[p + 2] == 109 and data[p + 3] == 112:  # amp
        return q + 1
    if ln == 4 and a == 97 and data[p + 2] == 112 and data[p + 3] == 111 and data[p + 4] == 115:
        return q + 1
    if ln == 4 and a == 113 and data[p + 2] == 117 and data[p + 3] == 111 and data[p + 4] == 116:
        return q + 1
    return -1


@njit(cache=True)
def _text_ok(data, s, e):
    """0 when data[s:e] is valid character data, else an error code."""
    q = s
    while q < e:
        c = data[q]
        if c == 38:
            r = _ref_end(data, q, e)
            if r < 0:
                return E_ENTITY
            q = r
        elif c == 60:
            return E_SYNTAX
        elif c < 32 and c != 9 and c != 10 and c != 13:
            return E_UTF8
        elif c >= 128:
            k = seq_len(data, q, e)
            if k == 0:
                return E_UTF8
            q += k
        else:
            q += 1
    return 0


@njit(cache=True)
def _name_ok(data, s, e):
    if e <= s:
        return False
    c = data[s]
    if not ((65 <= c <= 90) or (97 <= c <= 122) or c == 95 or c == 58 or c >= 128):
        return False
    q = s
    while q < e:
        c = data[q]
        if c >= 128:  # non-ASCII name characters: at least well-formed UTF-8
            k = seq_len(data, q, e)
            if k == 0:
                return False
            q += k
            continue
        if q > s and not ((65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57) or c == 95
                          or c == 58 or c == 45 or c == 46):  # fmt: skip
            return False
        q += 1
    return True


@njit(cache=True)
def _chars_ok(data, s, e):
    """0 when data[s:e] is well-formed UTF-8 without the control characters XML forbids."""
    q = s
    while q < e:
        c = data[q]
        if c < 32 and c != 9 and c != 10 and c != 13:
            return E_UTF8
        if c >= 128:
            k = seq_len(data, q, e)
            if k == 0:
                return E_UTF8
            q += k
        else:
            q += 1
    return 0


@njit(cache=True)
def _child(parent, is_attr, names, name_off, node, attr, data, s, e, local):
    """The layout child of `node` named data[s:e] (by local name when `local`), or -1."""
    ls = s
    if local:
        for q in range(s, e):
            if data[q] == 58:
                ls = q + 1
    for c in range(node + 1, parent.shape[0]):
        if parent[c] != node or is_attr[c] != attr:
            continue
        a = name_off[c]
        b = name_off[c + 1]
        if b - a != e - ls:
            continue
        same = True
        for k in range(b - a):
            if names[a + k] != data[ls + k]:
                same = False
                break
        if same:
            return c
    return -1


@njit(cache=True)
def _scan(data, starts, ends, parent, is_attr, leaf, names, name_off, nleaves, locate_only, occ,
          repeated):  # fmt: skip
    """`occ`: which occurrence of each field to locate (0: the first); `repeated`: whether a
    field may occur more than once (else a second occurrence is E_DUP). Also returns how often
    each field occurs in each record."""
    n = starts.shape[0]
    cnt = np.zeros((n, max(nleaves, 1)), np.int32)
    etrack = np.zeros(MAX_DEPTH + 1, np.bool_)  # is the open element the tracked occurrence
    vstart = np.zeros((n, nleaves), np.int64)
    vend = np.zeros((n, nleaves), np.int64)
    vkind = np.zeros((n, nleaves), np.int8)
    err = np.zeros(n, np.int8)
    errpos = np.zeros(n, np.int64)
    errfield = np.full(n, -1, np.int64)
    estart = np.zeros(MAX_DEPTH + 1, np.int64)  # name span of each open element
    eend = np.zeros(MAX_DEPTH + 1, np.int64)
    enode = np.zeros(MAX_DEPTH + 1, np.int64)  # layout node of each open element, -1 if none
    attr_s = np.zeros(MAX_ATTRS, np.int64)  # the attribute names of the current start tag
    attr_e = np.zeros(MAX_ATTRS, np.int64)
    for r in range(n):
        s = starts[r]
        e = ends[r]
        p = s
        d = 0
        code = 0
        efield = -1
        done = -1  # end of the record element
        found = 0  # fields located (with `locate_only`, the scan stops when all are)
        while p < e and code == 0:
            if locate_only and found == nleaves and nleaves > 0:
                done = p
                break
            c = data[p]
            if c != 60:  # character data
                q = p
                while q < e and data[q] != 60:
                    q += 1
                if d > 0:
                    code = _text_ok(data, p, q)
                    if code == 0 and _find(data, p, q, 93, 93, 62) >= 0:
                        code = E_SYNTAX  # "]]>" may not appear in content (XML 1.0, 2.4)
                    if code != 0:
                        # find the exact position for the message
                        while p < q and data[p] != 38 and data[p] >= 32:
                            p += 1
                        break
                p = q
                continue
            if p + 1 < e and data[p + 1] == 33:
                if p + 3 < e and data[p + 2] == 45 and data[p + 3] == 45:
                    q = _find(data, p + 4, e, 45, 45, 62)
                    if q < 0 or _find(data, p + 4, q, 45, 45, 0) >= 0:  # no "--" inside
                        code = E_SYNTAX
                        break
                    code = _chars_ok(data, p + 4, q)
                    if code != 0:
                        break
                    if d > 0 and enode[d - 1] >= 0 and leaf[enode[d - 1]] >= 0 and etrack[d - 1]:
                        vkind[r, leaf[enode[d - 1]]] = K_OBJECT  # mixed content in a field
                    p = q + 3
                    continue
                if (p + 8 < e and data[p + 2] == 91 and data[p + 3] == 67 and data[p + 4] == 68
                        and data[p + 5] == 65 and data[p + 6] == 84 and data[p + 7] == 65
                        and data[p + 8] == 91):  # fmt: skip  # <![CDATA[
                    q = _find(data, p + 9, e, 93, 93, 62)
                    if q < 0:
                        code = E_SYNTAX
                        break
                    code = _chars_ok(data, p + 9, q)
                    if code != 0:
                        break
                    p = q + 3
                    continue
                code = E_DTD
                break
            if p + 1 < e and data[p + 1] == 63:
                q = _find(data, p + 2, e, 63, 62, 0)
                if q < 0:
                    code = E_SYNTAX
                    break
                code = _chars_ok(data, p + 2, q)
                if code != 0:
                    break
                if d > 0 and enode[d - 1] >= 0 and leaf[enode[d - 1]] >= 0 and etrack[d - 1]:
                    vkind[r, leaf[enode[d - 1]]] = K_OBJECT
                p = q + 2
                continue
            if done >= 0:  # the tail after the record: tags of the groups, passed through
                q, _ = _tag_end(data, p, e)
                p = q
                continue
            if p + 1 < e and data[p + 1] == 47:  # end tag
                ns = p + 2
                ne = _name_end(data, ns, e)
                q = ne
                while q < e and _is_ws(data[q]):
                    q += 1
                if q >= e or data[q] != 62:
                    code = E_SYNTAX
                    break
                if d == 0 or not _raw_eq(data, ns, ne, estart[d - 1], eend[d - 1]):
                    code = E_TAG
                    break
                d -= 1
                node = enode[d]
                if node >= 0 and leaf[node] >= 0 and etrack[d]:
                    lf = leaf[node]
                    vend[r, lf] = p
                    found += 1
                    if vkind[r, lf] == K_MISSING:
                        vkind[r, lf] = K_STRING
                p = q + 1
                if d == 0:
                    done = p
                continue
            # start tag
            ns = p + 1
            ne = _name_end(data, ns, e)
            if not _name_ok(data, ns, ne):
                code = E_SYNTAX
                break
            if d >= MAX_DEPTH:
                code = E_DEPTH
                break
            if d == 0:
                node = 0
            else:
                pn = enode[d - 1]
                node = -1
                if pn >= 0:
                    if leaf[pn] >= 0:  # a child element inside a field: the field is an object
                        if etrack[d - 1]:
                            vkind[r, leaf[pn]] = K_OBJECT
                    else:
                        node = _child(
                            parent, is_attr, names, name_off, pn, False, data, ns, ne, True
                        )
            # attributes
            q = ne
            empty = False
            nattr = 0
            while code == 0:
                while q < e and _is_ws(data[q]):
                    q += 1
                if q >= e:
                    code = E_SYNTAX
                    break
                if data[q] == 62:
                    q += 1
                    break
                if data[q] == 47:
                    if q + 1 < e and data[q + 1] == 62:
                        empty = True
                        q += 2
                        break
                    code = E_SYNTAX
                    break
                if q == ne or not _is_ws(data[q - 1]):
                    code = E_SYNTAX  # attributes are separated by whitespace
                    break
                an = q
                ae = _name_end(data, an, e)
                if not _name_ok(data, an, ae) or nattr == MAX_ATTRS:
                    code = E_SYNTAX
                    break
                for k in range(nattr):  # an attribute twice is not well-formed (XML 1.0, 3.1)
                    if _raw_eq(data, an, ae, attr_s[k], attr_e[k]):
                        code = E_SYNTAX
                        break
                if code != 0:
                    break
                attr_s[nattr] = an
                attr_e[nattr] = ae
                nattr += 1
                q = ae
                while q < e and _is_ws(data[q]):
                    q += 1
                if q >= e or data[q] != 61:
                    code = E_SYNTAX
                    break
                q += 1
                while q < e and _is_ws(data[q]):
                    q += 1
                if q >= e or (data[q] != 34 and data[q] != 39):
                    code = E_SYNTAX
                    break
                quote = data[q]
                vs = q + 1
                ve = vs
                while ve < e and data[ve] != quote:
                    ve += 1
                if ve >= e:
                    code = E_SYNTAX
                    break
                code = _text_ok(data, vs, ve)
                if code != 0:
                    break
                if node >= 0:
                    a = _child(parent, is_attr, names, name_off, node, True, data, an, ae, True)
                    if a >= 0 and leaf[a] >= 0:
                        lf = leaf[a]
                        c = cnt[r, lf]
                        cnt[r, lf] += 1
                        if c > 0 and not repeated:
                            code = E_DUP
                            efield = lf
                            break
                        if c == occ:
                            vstart[r, lf] = vs
                            vend[r, lf] = ve
                            vkind[r, lf] = K_STRING
                            found += 1
                q = ve + 1
            if code != 0:
                p = q
                break
            track = False
            if node >= 0 and leaf[node] >= 0:
                lf = leaf[node]
                c = cnt[r, lf]
                cnt[r, lf] += 1
                if c > 0 and not repeated:
                    code = E_DUP
                    efield = lf
                    break
                track = c == occ
                if track:
                    vstart[r, lf] = q
                    vend[r, lf] = q
                    if empty:
                        vkind[r, lf] = K_NULL
                        found += 1
            if empty:
                if d == 0:
                    done = q
            else:
                estart[d] = ns
                eend[d] = ne
                enode[d] = node
                etrack[d] = track
                d += 1
            p = q
        if code == 0 and done < 0:
            code = E_UNCLOSED
        if code != 0:
            err[r] = code
            errpos[r] = p - s
            errfield[r] = efield
            for j in range(nleaves):
                vkind[r, j] = K_MISSING
                cnt[r, j] = 0
    return vstart, vend, vkind, err, errpos, errfield, cnt


def scan(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    lay: XmlLayout,
    locate_only: bool = False,
    repeated: bool = True,
) -> Scan:
    """Validate each record element and locate the layout's fields (text or attribute spans).
    `locate_only` (the router, which needs the key alone) stops reading a record once every
    field is found; the worker's full scan validates the rest.

    A field that occurs several times in a record (an element repeated, in one parent or in
    repeated parents) has one span per occurrence: the first in column `leaf`, each further
    one in a column after the layout's fields, listed in `sc.extra[leaf]` (`sc.leaf_of` maps
    every column to its field). Each further occurrence costs one more pass over the records
    that have it. `repeated=False` makes a second occurrence an error (E_DUP) instead."""
    nl = len(lay.paths)
    args = (lay.parent, lay.is_attr, lay.leaf, lay.names, lay.name_off, nl)
    vs, ve, vk, err, errpos, errfield, cnt = _scan(
        data, starts, ends, *args, locate_only, 0, repeated
    )
    sc = Scan(starts, ends, vs, ve, vk, err, errpos, errfield)
    sc.extra = {}  # type: ignore[attr-defined]
    sc.leaf_of = np.arange(nl, dtype=np.int64)  # type: ignore[attr-defined]
    top = int(cnt.max()) if nl and len(starts) and not locate_only else 0
    if top <= 1:
        return sc
    more = np.flatnonzero(cnt.max(axis=0) > 1)
    cols_s, cols_e, cols_k, leaf_of = [vs], [ve], [vk], [sc.leaf_of]
    col = nl
    for j in range(1, top):
        sel = np.flatnonzero(cnt.max(axis=0) > j)
        rows = np.flatnonzero((cnt[:, sel] > j).any(axis=1))
        s_j, e_j, k_j, *_ = _scan(data, starts[rows], ends[rows], *args, False, j, True)
        for f in sel:
            a = np.zeros(len(starts), np.int64)
            b = np.zeros(len(starts), np.int64)
            k = np.zeros(len(starts), np.int8)
            a[rows], b[rows], k[rows] = s_j[:, f], e_j[:, f], k_j[:, f]
            cols_s.append(a[:, None])
            cols_e.append(b[:, None])
            cols_k.append(k[:, None])
            leaf_of.append(np.array([f], np.int64))
            sc.extra.setdefault(int(f), []).append(col)  # type: ignore[attr-defined]
            col += 1
    del more
    sc.vstart = np.ascontiguousarray(np.hstack(cols_s))
    sc.vend = np.ascontiguousarray(np.hstack(cols_e))
    sc.vkind = np.ascontiguousarray(np.hstack(cols_k))
    sc.leaf_of = np.concatenate(leaf_of)  # type: ignore[attr-defined]
    return sc


# ---------------------------------------------------------------- extract and escape


@njit(cache=True)
def _unescape(data, vstart, vend, vkind, attr):
    """Text of (n, m) spans: references resolved, CDATA unwrapped, line ends normalised (and,
    in attributes, tabs and line ends as spaces), as XML 1.0 sections 2.11 and 3.3.3 read it."""
    n, m = vstart.shape
    base = np.zeros(m + 1, np.int64)
    for i in range(n):
        for f in range(m):
            base[f + 1] += vend[i, f] - vstart[i, f]
    for f in range(m):
        base[f + 1] += base[f]
    out = np.empty(base[m] + 1, np.uint8)
    off = np.zeros((m, n + 1), np.int64)
    valid = np.zeros((m, n), np.bool_)
    pos = base[:m].copy()
    for i in range(n):
        for f in range(m):
            o = pos[f]
            if vkind[i, f] == K_STRING:
                q = vstart[i, f]
                e = vend[i, f]
                while q < e:
                    c = data[q]
                    if c == 60:  # <![CDATA[ ... ]]> (comments and elements make the kind object)
                        t = _find(data, q + 9, e, 93, 93, 62)
                        for k in range(q + 9, t):
                            out[o] = data[k]
                            o += 1
                        q = t + 3
                        continue
                    if c == 38:
                        r = _ref_end(data, q, e)
                        if data[q + 1] == 35:
                            v = 0
                            if data[q + 2] == 120:
                                for k in range(q + 3, r - 1):
                                    h = data[k]
                                    v = v * 16 + (
                                        h - 48 if h <= 57 else (h - 87 if h >= 97 else h - 55)
                                    )
                            else:
                                for k in range(q + 2, r - 1):
                                    v = v * 10 + data[k] - 48
                            if v < 0x80:
                                out[o] = v
                                o += 1
                            elif v < 0x800:
                                out[o] = 0xC0 | (v >> 6)
                                out[o + 1] = 0x80 | (v & 0x3F)
                                o += 2
                            elif v < 0x10000:
                                out[o] = 0xE0 | (v >> 12)
                                out[o + 1] = 0x80 | ((v >> 6) & 0x3F)
                                out[o + 2] = 0x80 | (v & 0x3F)
                                o += 3
                            else:
                                out[o] = 0xF0 | (v >> 18)
                                out[o + 1] = 0x80 | ((v >> 12) & 0x3F)
                                out[o + 2] = 0x80 | ((v >> 6) & 0x3F)
                                out[o + 3] = 0x80 | (v & 0x3F)
                                o += 4
                        else:
                            a = data[q + 1]
                            if a == 108:
                                out[o] = 60
                            elif a == 103:
                                out[o] = 62
                            elif a == 113:
                                out[o] = 34
                            elif data[q + 2] == 109:
                                out[o] = 38
                            else:
                                out[o] = 39
                            o += 1
                        q = r
                        continue
                    if c == 13:
                        out[o] = 32 if attr[f] else 10
                        o += 1
                        q += 2 if q + 1 < e and data[q + 1] == 10 else 1
                        continue
                    if attr[f] and (c == 10 or c == 9):
                        out[o] = 32
                    else:
                        out[o] = c
                    o += 1
                    q += 1
                valid[f, i] = True
            pos[f] = o
            off[f, i + 1] = o - base[f]
    return off, out, valid, base, pos


def extract_columns(
    data: np.ndarray, sc: Scan, lay: XmlLayout, leaves: list[int]
) -> list[pa.Array]:
    """The fields' text as large_string columns (null where missing, empty or not text)."""
    leaves_a = np.array(leaves, np.int64)
    node_of = {int(lf): i for i, lf in enumerate(lay.leaf) if lf >= 0}
    leaf_of = getattr(sc, "leaf_of", None)  # a further occurrence's column -> its field
    fields = [int(leaf_of[lf]) if leaf_of is not None else lf for lf in leaves]
    attr = np.array([bool(lay.is_attr[node_of[f]]) for f in fields], np.bool_)
    off, out, valid, base, pos = _unescape(
        data,
        np.ascontiguousarray(sc.vstart[:, leaves_a]),
        np.ascontiguousarray(sc.vend[:, leaves_a]),
        np.ascontiguousarray(sc.vkind[:, leaves_a]),
        attr,
    )
    return string_columns(off, out, valid, base, pos)


_ESC_LEN = np.zeros(256, np.int64)
_ESC = np.zeros((256, 6), np.uint8)
for _c, _r in {38: b"&amp;", 60: b"&lt;", 62: b"&gt;", 34: b"&quot;", 39: b"&apos;",
               9: b"&#9;", 10: b"&#10;", 13: b"&#13;"}.items():  # fmt: skip
    _ESC_LEN[_c] = len(_r)
    _ESC[_c, : len(_r)] = np.frombuffer(_r, np.uint8)


@njit(cache=True)
def _escape(offsets, data, valid, esc, esc_len):
    n = offsets.shape[0] - 1
    out = np.empty(6 * (offsets[n] - offsets[0]) + 1, np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        if valid[i]:
            for q in range(offsets[i], offsets[i + 1]):
                c = data[q]
                k = esc_len[c]
                if k == 0:
                    out[o] = c
                    o += 1
                else:
                    for j in range(k):
                        out[o + j] = esc[c, j]
                    o += k
        off[i + 1] = o
    return off, out[:o].copy()


def escape(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """XML text of each value, safe in element content and in either attribute quoting; null is
    the empty text. (Tabs and line ends as character references, so attributes keep them.)"""
    b = string_buffers(values)
    off, out = _escape(b.offsets, b.data, b.valid, _ESC, _ESC_LEN)
    return off - off[0], out


# ---------------------------------------------------------------- unknown fields


@njit(cache=True)
def _grow(a, r):
    if r < a.shape[0]:
        return a
    b = np.empty(2 * a.shape[0], a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _in_skip(skip_s, skip_e, skip_k, i, pos):
    """Whether `pos` lies inside one of record i's skip spans (kind != 0)."""
    for f in range(skip_s.shape[1]):
        if skip_k[i, f] != 0 and skip_s[i, f] <= pos < skip_e[i, f]:
            return True
    return False


@njit(cache=True)
def _push_span(rec, vs, ve, at, r, i, s, e, attr):
    """Append (record, start, end, is attribute) at row r, growing the columns as needed."""
    rec = _grow(rec, r)
    vs = _grow(vs, r)
    ve = _grow(ve, r)
    at = _grow(at, r)
    rec[r] = i
    vs[r] = s
    ve[r] = e
    at[r] = attr
    return rec, vs, ve, at, r + 1


@njit(cache=True)
def _unknown(data, starts, ends, ok, skip_s, skip_e, skip_k):
    """(record, start, end, is attribute) of every text run, CDATA section and attribute value
    inside each ok record's element, except those inside a span of skip (n, k) with kind != 0."""
    cap = 64
    rec = np.empty(cap, np.int64)
    vs = np.empty(cap, np.int64)
    ve = np.empty(cap, np.int64)
    at = np.empty(cap, np.bool_)
    r = 0
    for i in range(starts.shape[0]):
        if not ok[i]:
            continue
        p = starts[i]
        e = ends[i]
        d = 0
        opened = False
        while p < e and not (opened and d == 0):
            c = data[p]
            a = -1
            b = -1
            is_attr = False
            if c != 60:
                q = p
                while q < e and data[q] != 60:
                    q += 1
                if d > 0:
                    t = p
                    while t < q and _is_ws(data[t]):
                        t += 1
                    if t < q:
                        a, b = p, q
                p = q
            elif p + 8 < e and data[p + 1] == 33 and data[p + 2] == 91:  # CDATA
                q = _skip_markup(data, p, e)
                if d > 0:
                    a, b = p, q
                p = q
            elif p + 1 < e and (data[p + 1] == 33 or data[p + 1] == 63):
                p = _skip_markup(data, p, e)
                continue
            elif p + 1 < e and data[p + 1] == 47:  # end tag
                q, _ = _tag_end(data, p, e)
                d -= 1
                p = q
                continue
            else:  # start tag: its attribute values
                q, empty = _tag_end(data, p, e)
                t = _name_end(data, p + 1, q)
                while t < q:
                    cc = data[t]
                    if cc == 34 or cc == 39:
                        u = t + 1
                        while u < q and data[u] != cc:
                            u += 1
                        # the attribute's name: skip namespace declarations
                        ns = t - 1
                        while ns > p and data[ns] != 61:
                            ns -= 1
                        ns -= 1
                        while ns > p and _is_ws(data[ns]):
                            ns -= 1
                        nb = ns
                        while nb > p and not _is_ws(data[nb]):
                            nb -= 1
                        xmlns = (ns - nb >= 5 and data[nb + 1] == 120 and data[nb + 2] == 109
                                 and data[nb + 3] == 108 and data[nb + 4] == 110
                                 and data[nb + 5] == 115)  # fmt: skip
                        if (u > t + 1 and not xmlns
                                and not _in_skip(skip_s, skip_e, skip_k, i, t + 1)):  # fmt: skip
                            rec, vs, ve, at, r = _push_span(rec, vs, ve, at, r, i, t + 1, u, True)
                        t = u + 1
                    else:
                        t += 1
                opened = True
                if not empty:
                    d += 1
                p = q
                continue
            if a >= 0 and not _in_skip(skip_s, skip_e, skip_k, i, a):
                rec, vs, ve, at, r = _push_span(rec, vs, ve, at, r, i, a, b, is_attr)
    return rec[:r], vs[:r], ve[:r], at[:r]


def unknown_spans(
    data: np.ndarray, sc: Scan, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(record, start, end, is attribute) of the text the policy does not name in the records
    where `ok`: every run of character data and CDATA section inside the record element, and
    every attribute value but namespace declarations, outside the fields' spans (`sc`). A
    value split by a CDATA section or a comment is seen in pieces."""
    return _unknown(data, sc.starts, sc.ends, ok, sc.vstart, sc.vend, sc.vkind)


def unescape_spans(data: np.ndarray, vs: np.ndarray, ve: np.ndarray, attr: bool) -> pa.Array:
    """The text of spans as an XML parser reads it (one large_string value per span)."""
    n = len(vs)
    kinds = np.full((n, 1), K_STRING, np.int8)
    off, out, valid, base, pos = _unescape(
        data, vs.reshape(n, 1), ve.reshape(n, 1), kinds, np.array([attr], np.bool_)
    )
    return string_columns(off, out, valid, base, pos)[0]


@njit(cache=True)
def _rewrite(data, starts, ends, rec, vs, ve, rep_off, rep_data):
    n = starts.shape[0]
    total = 0
    for i in range(n):
        total += ends[i] - starts[i]
    for j in range(rec.shape[0]):
        total += rep_off[j + 1] - rep_off[j] - (ve[j] - vs[j])
    out = np.empty(total + 1, np.uint8)
    ns = np.empty(n, np.int64)
    ne = np.empty(n, np.int64)
    o = 0
    j = 0
    for i in range(n):
        ns[i] = o
        p = starts[i]
        while j < rec.shape[0] and rec[j] == i:
            for q in range(p, vs[j]):
                out[o] = data[q]
                o += 1
            for q in range(rep_off[j], rep_off[j + 1]):
                out[o] = rep_data[q]
                o += 1
            p = ve[j]
            j += 1
        for q in range(p, ends[i]):
            out[o] = data[q]
            o += 1
        ne[i] = o
    return out[:o], ns, ne


def rewrite(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, rec: np.ndarray, vs: np.ndarray,
    ve: np.ndarray, rep_off: np.ndarray, rep_data: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Records (one buffer, nothing added between them) with the spans (sorted by record and
    position) replaced by the escaped texts `rep`; returns (data, starts, ends)."""
    return _rewrite(data, starts, ends, rec, vs, ve, rep_off, rep_data)


@njit(cache=True)
def _drop(data, offsets, parent, is_attr, leaf, names, name_off):
    """Each record with only the layout's fields: elements on a field's path with the fields'
    attributes (and namespace declarations), field elements whole; other elements, text,
    comments and attributes left out. The markup after the record element is kept."""
    n = offsets.shape[0] - 1
    out = np.empty(offsets[n] - offsets[0] + 1, np.uint8)
    off = np.zeros(n + 1, np.int64)
    knode = np.zeros(MAX_DEPTH + 2, np.int64)
    o = 0
    for r in range(n):
        p = offsets[r]
        e = offsets[r + 1]
        d = 0
        skip = -1  # depth at which a left-out element opened
        while p < e:
            c = data[p]
            inleaf = d > 0 and skip < 0 and leaf[knode[d - 1]] >= 0
            if c != 60:
                q = p
                while q < e and data[q] != 60:
                    q += 1
                if inleaf or d == 0:  # d == 0: before the record element (a declaration)
                    for k in range(p, q):
                        out[o] = data[k]
                        o += 1
                p = q
                continue
            if p + 1 < e and (data[p + 1] == 33 or data[p + 1] == 63):
                q = _skip_markup(data, p, e)
                if inleaf or d == 0:
                    for k in range(p, q):
                        out[o] = data[k]
                        o += 1
                p = q
                continue
            q, empty = _tag_end(data, p, e)
            if p + 1 < e and data[p + 1] == 47:  # end tag
                d -= 1
                if skip >= 0:
                    if d == skip:
                        skip = -1
                else:
                    for k in range(p, q):
                        out[o] = data[k]
                        o += 1
                p = q
                if d <= 0:  # the record element closed: the rest is the tail
                    for k in range(p, e):
                        out[o] = data[k]
                        o += 1
                    p = e
                continue
            if skip >= 0 or d > MAX_DEPTH:
                if not empty:
                    d += 1
                p = q
                continue
            ne = _name_end(data, p + 1, q)
            if d == 0:
                node = 0
            elif inleaf:
                node = knode[d - 1]
            else:
                node = _child(parent, is_attr, names, name_off, knode[d - 1], False, data,
                              p + 1, ne, True)  # fmt: skip
            if node < 0:
                if not empty:
                    skip = d
                    d += 1
                p = q
                continue
            if inleaf:
                for k in range(p, q):
                    out[o] = data[k]
                    o += 1
            else:
                for k in range(p, ne):
                    out[o] = data[k]
                    o += 1
                t = ne
                while t < q:
                    while t < q and _is_ws(data[t]):
                        t += 1
                    if t >= q or data[t] == 47 or data[t] == 62:
                        break
                    an = t
                    ae = _name_end(data, an, q)
                    u = ae
                    while u < q and data[u] != 34 and data[u] != 39:
                        u += 1
                    if u >= q:
                        break
                    qc = data[u]
                    v = u + 1
                    while v < q and data[v] != qc:
                        v += 1
                    keep = (ae - an >= 5 and data[an] == 120 and data[an + 1] == 109
                            and data[an + 2] == 108 and data[an + 3] == 110
                            and data[an + 4] == 115)  # fmt: skip  # xmlns
                    if not keep:
                        a = _child(parent, is_attr, names, name_off, node, True, data, an, ae, True)
                        keep = a >= 0 and leaf[a] >= 0
                    if keep:
                        out[o] = 32
                        o += 1
                        for k in range(an, v + 1):
                            out[o] = data[k]
                            o += 1
                    t = v + 1
                if empty:
                    out[o] = 47
                    o += 1
                out[o] = 62
                o += 1
            if not empty:
                knode[d] = node
                d += 1
            elif d == 0:  # an empty record element: the rest is the tail
                for k in range(q, e):
                    out[o] = data[k]
                    o += 1
                q = e
            p = q
        off[r + 1] = o
    return off, out[:o]


def drop_unknown(records: pa.Array, lay: XmlLayout) -> pa.Array:
    """Emitted records (`emit`'s output) with only the layout's fields (see `_drop`): what
    `unknown_fields: drop` writes. Empty entries (records not emitted) stay empty."""
    b = string_buffers(records)
    off, out = _drop(b.data, b.offsets, lay.parent, lay.is_attr, lay.leaf, lay.names,
                     lay.name_off)  # fmt: skip
    return string_array(off, out, None, binary=True)


@njit(cache=True)
def _splice(data, starts, ends, emit, vstart, vend, edit, rep_off, rep_data, nrep):
    n = starts.shape[0]
    total = 0
    for i in range(n):
        if emit[i]:
            total += ends[i] - starts[i]
            for f in range(nrep):
                if edit[i, f]:
                    total += rep_off[f, i + 1] - rep_off[f, i] - (vend[i, f] - vstart[i, f])
    out = np.empty(total + 1, np.uint8)
    off = np.zeros(n + 1, np.int64)
    order = np.empty(nrep, np.int64)
    o = 0
    for i in range(n):
        if emit[i]:
            m = 0
            for f in range(nrep):
                if edit[i, f]:
                    j = m
                    while j > 0 and vstart[i, order[j - 1]] > vstart[i, f]:
                        order[j] = order[j - 1]
                        j -= 1
                    order[j] = f
                    m += 1
            p = starts[i]
            for k in range(m):
                f = order[k]
                for q in range(p, vstart[i, f]):
                    out[o] = data[q]
                    o += 1
                for q in range(rep_off[f, i], rep_off[f, i + 1]):
                    out[o] = rep_data[q]
                    o += 1
                p = vend[i, f]
            for q in range(p, ends[i]):
                out[o] = data[q]
                o += 1
        off[i + 1] = o
    return off, out[:o]


def emit(
    data: np.ndarray,
    sc: Scan,
    emit_mask: np.ndarray,
    edited: list[int],
    edit: np.ndarray,
    reps: list[tuple[np.ndarray, np.ndarray]],
) -> pa.Array:
    """Emitted records with the edited fields' spans replaced (no separator added: a record's
    bytes run to the next record, so the document comes back whole)."""
    n = len(sc.starts)
    cols = np.array(edited, np.int64)
    k = len(cols)
    vs = np.ascontiguousarray(sc.vstart[:, cols]) if k else np.zeros((n, 1), np.int64)
    ve = np.ascontiguousarray(sc.vend[:, cols]) if k else np.zeros((n, 1), np.int64)
    ed = np.ascontiguousarray(edit) if k else np.zeros((n, 1), np.bool_)
    rep_off, rep_data = pack_replacements(reps, n)
    off, out = _splice(data, sc.starts, sc.ends, emit_mask, vs, ve, ed, rep_off, rep_data, k)
    return string_array(off, out, None, binary=True)


@njit(cache=True)
def _element_end(data, s, e):
    """End of the element starting at s (for a dead record's tail); e when unknown."""
    depth = 0
    p = s
    while p < e:
        if data[p] != 60:
            p += 1
            continue
        if p + 1 < e and (data[p + 1] == 33 or data[p + 1] == 63):
            p = _skip_markup(data, p, e)
            continue
        q, empty = _tag_end(data, p, e)
        if p + 1 < e and data[p + 1] == 47:
            depth -= 1
        elif not empty:
            depth += 1
        p = q
        if depth <= 0:
            return p
    return e


def tail(raw: bytes) -> bytes:
    """The bytes after a record's element (what stays in the document when the record is a
    dead letter): empty when the element cannot be delimited."""
    data = np.frombuffer(raw, np.uint8)
    end = int(_element_end(data, 0, len(data)))
    return raw[end:] if end < len(raw) else b""


def replay_document(raws: list[bytes], record: str, namespaces: dict[str, str]) -> bytes:
    """A document holding dead-letter records again (each dead letter is a record element and
    the markup after it; the element alone is kept), inside the record path's ancestors, with
    the path's namespace prefixes declared: what `dead-letters replay` feeds the pipeline."""
    steps = record.strip("/").split("/")
    decls = "".join(
        f' xmlns:{p}="{uri}"'
        for p, uri in namespaces.items()
        if any(s.startswith(p + ":") for s in steps)
    )
    opening = "".join(f"<{s}{decls if i == 0 else ''}>" for i, s in enumerate(steps[:-1]))
    closing = "".join(f"</{s}>" for s in reversed(steps[:-1]))
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n{opening}\n'.encode()]
    for raw in raws:
        data = np.frombuffer(raw, np.uint8)
        parts.append(raw[: int(_element_end(data, 0, len(data)))] + b"\n")
    parts.append(f"{closing}\n".encode())
    return b"".join(parts)
