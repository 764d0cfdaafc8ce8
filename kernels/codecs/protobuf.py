"""Protobuf codec: a Numba wire-format walker that locates the policy's fields inside raw messages
and splices re-encoded values back, fixing up every enclosing length prefix.

Records are length-delimited messages (a varint byte length, then the message: the framing of
`writeDelimitedTo` / `parseDelimitedFrom`); a record's span is the whole frame, prefix included,
so a dead letter holds a frame that can be replayed as is. Single messages (Kafka values) are
framed with `frame` and unframed with `unframe`.

Field paths are dotted field names resolved against a compiled descriptor set (`protoc
--descriptor_set_out`, see `compile_proto`). The walker descends only into the messages on a
policy path and steps over everything else by its wire type, so unknown fields, other
sub-messages and field order stay byte-identical (protobuf encoding reference,
https://protobuf.dev/programming-guides/encoding/). One pass per batch validates the framing of
each record and of each message on a policy path (tags, wire types, varints, lengths, UTF-8 of
string fields), and records for each policy field the span of its value.

A policy field that occurs more than once in a record (a repeated field with several elements,
a non-repeated field written twice, or a message on the path written twice, which parsers merge)
is counted (`sc.counts`, `sc.rep`) and masked one occurrence at a time (`scan` with `target`
and `occ`); with `repeated=False` it is an error instead (E_DUP). Groups (wire types 3 and 4,
deprecated) are refused. A masked value of null removes the field.

Repeated numeric fields (every scalar type but string and bytes) are read in both encodings, as
parsers must (encoding reference, "Packed Repeated Fields"): unpacked, one tag and value per
element, and packed, one length-delimited block of concatenated varints or 4- or 8-byte values
(proto3's default), even both in one record. Each element is one occurrence, masked like a
single value of its type; the output keeps the record's encoding, a packed element re-encoded
in place with its block's length prefix fixed along with the enclosing ones. A null result
drops that element alone, and a block left without elements goes, tag and all, as the library
writes no field for an empty repeated one. A packed block cut off inside a varint, or whose
length is not a multiple of its element size, sends the record to the dead letters (E_PACKED).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels._arrow import string_array, string_buffers
from raymask.kernels.codecs._utf8 import seq_len
from raymask.kernels.codecs.spans import (
    K_FALSE,
    K_MISSING,
    K_NUMBER,
    K_STRING,
    K_TRUE,
    Scan,
)

__all__ = [
    "ERRORS",
    "ProtoScan",
    "ProtoLayout",
    "compile_proto",
    "load_layout",
    "boundary",
    "split",
    "scan",
    "extract_columns",
    "emit",
    "frame",
    "unframe",
    "message_class",
    "load_descriptor_set",
    "encode_values",
    "EncodeError",
]

E_FRAMING, E_WIRE, E_GROUP, E_TYPE, E_UTF8, E_DUP, E_TOO_BIG, E_PACKED = 1, 2, 3, 4, 5, 6, 7, 8
ERRORS = {
    E_FRAMING: "length prefix does not match the message (truncated or corrupt framing)",
    E_WIRE: "invalid protobuf wire format",
    E_GROUP: "groups (wire types 3 and 4) are not supported",
    E_TYPE: "wire type does not match the schema",
    E_UTF8: "invalid UTF-8 in a string field",
    E_DUP: "field occurs more than once (repeated, or a message on its path written twice)",
    E_TOO_BIG: "message longer than the 64 MiB limit",
    E_PACKED: "malformed packed repeated field (a varint cut off, or a length that is not a "
    "multiple of the element size)",
}
MAX_MESSAGE = 64 << 20

# leaf value types (T_MESSAGE marks the inner nodes of a path)
(
    T_MESSAGE, T_STRING, T_INT32, T_INT64, T_UINT32, T_UINT64, T_SINT32, T_SINT64, T_BOOL,
    T_ENUM, T_FIXED32, T_FIXED64, T_SFIXED32, T_SFIXED64, T_FLOAT, T_DOUBLE, T_BYTES,
) = range(17)  # fmt: skip
_WIRE = {T_MESSAGE: 2, T_STRING: 2, T_BYTES: 2, T_FIXED64: 1, T_SFIXED64: 1, T_DOUBLE: 1}
_WIRE.update({t: 5 for t in (T_FIXED32, T_SFIXED32, T_FLOAT)})
_WIRE_OF = np.array([_WIRE.get(t, 0) for t in range(17)], np.int64)
_INTEGER = (T_INT32, T_INT64, T_UINT32, T_UINT64, T_SINT32, T_SINT64, T_ENUM)
_INTEGER += (T_FIXED32, T_FIXED64, T_SFIXED32, T_SFIXED64)
# types a repeated field may write packed: every scalar but string and bytes
_PACKABLE = (*_INTEGER, T_BOOL, T_FLOAT, T_DOUBLE)
TYPE_NAMES = {
    T_STRING: "string", T_INT32: "int32", T_INT64: "int64", T_UINT32: "uint32",
    T_UINT64: "uint64", T_SINT32: "sint32", T_SINT64: "sint64", T_BOOL: "bool", T_ENUM: "enum",
    T_FIXED32: "fixed32", T_FIXED64: "fixed64", T_SFIXED32: "sfixed32", T_SFIXED64: "sfixed64",
    T_FLOAT: "float", T_DOUBLE: "double", T_BYTES: "bytes", T_MESSAGE: "message",
}  # fmt: skip


# ---------------------------------------------------------------- schema


def compile_proto(proto: str | Path, include: list[str | Path] | None = None) -> bytes:
    """A FileDescriptorSet (with imports) for `proto`, compiled by grpcio-tools' protoc."""
    import tempfile

    from grpc_tools import protoc

    proto = Path(proto).resolve()
    inc = [proto.parent, *(Path(i).resolve() for i in include or [])]
    std = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", *(f"-I{i}" for i in inc), f"-I{std}"]
        args += ["--include_imports", f"--descriptor_set_out={out}", str(proto)]
        if protoc.main(args) != 0 or not out.exists():
            raise ValueError(f"{proto.name}: protoc could not compile it")
        return out.read_bytes()


def _pool(descriptor_set: bytes):  # noqa: ANN202
    from google.protobuf import descriptor_pb2, descriptor_pool

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool


def message_class(descriptor_set: bytes, message: str) -> type:
    """The generated Python class of `message` (tests and the benchmark's baseline)."""
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(_pool(descriptor_set).FindMessageTypeByName(message))


def _type_code(fd) -> int:  # noqa: ANN001
    from google.protobuf.descriptor import FieldDescriptor as F

    return {
        F.TYPE_STRING: T_STRING, F.TYPE_BYTES: T_BYTES, F.TYPE_INT32: T_INT32,
        F.TYPE_INT64: T_INT64, F.TYPE_UINT32: T_UINT32, F.TYPE_UINT64: T_UINT64,
        F.TYPE_SINT32: T_SINT32, F.TYPE_SINT64: T_SINT64, F.TYPE_BOOL: T_BOOL,
        F.TYPE_ENUM: T_ENUM, F.TYPE_FIXED32: T_FIXED32, F.TYPE_FIXED64: T_FIXED64,
        F.TYPE_SFIXED32: T_SFIXED32, F.TYPE_SFIXED64: T_SFIXED64, F.TYPE_FLOAT: T_FLOAT,
        F.TYPE_DOUBLE: T_DOUBLE, F.TYPE_MESSAGE: T_MESSAGE,
    }.get(fd.type, -1)  # fmt: skip


@dataclass(frozen=True)
class ProtoLayout:
    """The policy paths of one message type as a tree of field numbers (node 0: the message).

    Children have larger ids than their parents, which the emitter's bottom-up pass relies on."""

    paths: tuple[str, ...]
    parent: np.ndarray
    fieldno: np.ndarray
    ftype: np.ndarray  # T_*
    leaf: np.ndarray  # node -> leaf index, -1 for inner nodes
    leaf_node: np.ndarray  # leaf -> node
    ch_start: np.ndarray
    ch_count: np.ndarray
    children: np.ndarray
    depth: int
    packable: np.ndarray  # node -> a repeated numeric leaf (read packed and unpacked)


def load_layout(
    descriptor_set: bytes, message: str, paths: tuple[str, ...] | list[str]
) -> ProtoLayout:
    """Resolve dotted field-name paths against `message`; ValueError names what does not fit."""
    pool = _pool(descriptor_set)
    try:
        root = pool.FindMessageTypeByName(message)
    except KeyError:
        raise ValueError(f"message {message} is not in the descriptor set") from None
    parent, fieldno, ftype, leaf, packable = [-1], [0], [T_MESSAGE], [-1], [False]
    kids: list[list[int]] = [[]]
    desc = [root]
    for li, path in enumerate(paths):
        node = 0
        parts = path.split(".")
        for d, part in enumerate(parts):
            md = desc[node]
            if md is None or part not in md.fields_by_name:
                raise ValueError(
                    f"field {path}: {part} is not a field of {md.full_name if md else 'a scalar'}"
                )
            fd = md.fields_by_name[part]
            t = _type_code(fd)
            if t < 0:
                raise ValueError(f"field {path}: groups are not supported")
            last = d == len(parts) - 1
            if last and t == T_MESSAGE:
                raise ValueError(f"field {path}: is a message; name a field inside it")
            if not last and t != T_MESSAGE:
                raise ValueError(f"field {path}: {part} is a {TYPE_NAMES[t]}, not a message")
            if last and t == T_BYTES:
                raise ValueError(f"field {path}: bytes fields cannot be masked yet")
            found = next((c for c in kids[node] if fieldno[c] == fd.number), -1)
            if found < 0:
                found = len(parent)
                parent.append(node)
                fieldno.append(fd.number)
                ftype.append(t)
                leaf.append(-1)
                packable.append(last and t in _PACKABLE and _is_repeated(fd))
                kids.append([])
                desc.append(fd.message_type if t == T_MESSAGE else None)
                kids[node].append(found)
            elif last or leaf[found] >= 0:
                raise ValueError(f"field {path}: overlaps another field")
            node = found
        leaf[node] = li
    nn = len(parent)
    ch_start = np.zeros(nn, np.int64)
    ch_count = np.zeros(nn, np.int64)
    children: list[int] = []
    for i in range(nn):
        ch_start[i] = len(children)
        ch_count[i] = len(kids[i])
        children.extend(kids[i])
    leaf_a = np.array(leaf, np.int64)
    leaf_node = np.zeros(max(len(paths), 1), np.int64)
    for node, li in enumerate(leaf):
        if li >= 0:
            leaf_node[li] = node
    return ProtoLayout(
        paths=tuple(paths), parent=np.array(parent, np.int64), fieldno=np.array(fieldno, np.int64),
        ftype=np.array(ftype, np.int64), leaf=leaf_a, leaf_node=leaf_node, ch_start=ch_start,
        ch_count=ch_count, children=np.array(children or [0], np.int64),
        depth=max((p.count(".") + 1 for p in paths), default=1),
        packable=np.array(packable, np.bool_),
    )  # fmt: skip


def _is_repeated(fd) -> bool:  # noqa: ANN001
    rep = getattr(fd, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return fd.label == fd.LABEL_REPEATED


# ---------------------------------------------------------------- framing


@njit(cache=True, inline="always")
def _varint(data, p, end):
    """(value, position after) of the varint at p; position -1 when malformed or cut off."""
    v = np.uint64(0)
    shift = np.uint64(0)
    for k in range(10):
        if p + k >= end:
            return v, -1
        b = data[p + k]
        if k == 9 and b > 1:
            return v, -1
        v |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return v, p + k + 1
        shift += np.uint64(7)
    return v, -1


@njit(cache=True, inline="always")
def _vsize(v):
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


@njit(cache=True, inline="always")
def _put_varint(out, o, v):
    v = np.uint64(v)
    while v >= np.uint64(0x80):
        out[o] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        o += 1
    out[o] = np.uint8(v)
    return o + 1


@njit(cache=True)
def _frames(data, limit):
    """Frame starts and ends of a delimited stream, and the position after the last whole frame.
    A frame cut off at the end is returned (it is whole only at the end of input, where it is a
    dead letter); a prefix that is malformed or too large ends the framing: the rest is one frame."""
    n = data.shape[0]
    cap = 16
    starts = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    r = 0
    p = 0
    cut = 0
    while p < n:
        ln, q = _varint(data, p, n)
        broken = (q < 0 and n - p >= 10) or (q >= 0 and ln > np.uint64(limit))
        e = n if (q < 0 or broken) else q + np.int64(ln)
        if e > n:
            e = n
        elif not (q < 0) or broken:
            cut = e
        if r == cap:
            cap *= 2
            s2 = np.empty(cap, np.int64)
            e2 = np.empty(cap, np.int64)
            s2[:r] = starts[:r]
            e2[:r] = ends[:r]
            starts, ends = s2, e2
        starts[r] = p
        ends[r] = e
        r += 1
        p = e
    return starts[:r], ends[:r], cut


def boundary(data: np.ndarray) -> int:
    """Position after the last whole frame (-1 when there is none). A frame whose prefix cannot
    be read, or declares more than 64 MiB, cannot be resynchronised: the rest of the input is
    one broken frame (a dead letter)."""
    _, _, cut = _frames(data, MAX_MESSAGE)
    return int(cut) if cut > 0 else -1


def split(data: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, record numbers) of the frames; record numbers count from `base`."""
    s, e, _ = _frames(data, MAX_MESSAGE)
    return s, e, base + np.arange(len(s), dtype=np.int64)


@njit(cache=True)
def _payload_starts(data, starts, ends):
    out = starts.copy()
    for r in range(starts.shape[0]):
        _, q = _varint(data, starts[r], ends[r])
        if q >= 0:
            out[r] = q
    return out


def payload_split(data: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As `split`, with each span starting after its length prefix: the message bytes alone
    (for records that are not Protobuf but travel in delimited frames, such as Kafka values)."""
    s, e, _ = _frames(data, MAX_MESSAGE)
    return _payload_starts(data, s, e), e, base + np.arange(len(s), dtype=np.int64)


def count_frames(data: np.ndarray) -> int:
    return len(_frames(data, MAX_MESSAGE)[0])


def frame(values: list[bytes]) -> bytes:
    """Single messages (e.g. Kafka values) as one delimited stream."""
    from google.protobuf.internal.encoder import _VarintBytes

    return b"".join(_VarintBytes(len(v)) + v for v in values)


def unframe(records: pa.Array | list[bytes]) -> list[bytes]:
    """The messages of emitted records (each a delimited frame) without their prefixes."""
    out = []
    for r in records.to_pylist() if isinstance(records, pa.Array) else records:
        _, q = _varint(np.frombuffer(r, np.uint8), 0, len(r))
        out.append(r[q:])
    return out


# ---------------------------------------------------------------- scan


@dataclass
class ProtoScan(Scan):
    """A Scan plus, per record, what the emitter needs to re-encode: each leaf's tag start and
    value-header start, and each path message's length-prefix start and payload span."""

    fstart: np.ndarray = None  # type: ignore[assignment]  # (n, leaves) tag start
    lstart: np.ndarray = None  # type: ignore[assignment]  # (n, leaves) length/value start
    body: np.ndarray = None  # type: ignore[assignment]  # (n,) message start (after the prefix)
    mls: np.ndarray = None  # type: ignore[assignment]  # (n, nodes) length prefix of a message
    mvs: np.ndarray = None  # type: ignore[assignment]
    mve: np.ndarray = None  # type: ignore[assignment]
    mseen: np.ndarray = None  # type: ignore[assignment]
    # (n, leaves) the packed block around an element: its tag start, length-prefix start,
    # payload start (-1 when the element is not in a packed block) and payload end
    pts: np.ndarray = None  # type: ignore[assignment]
    pls: np.ndarray = None  # type: ignore[assignment]
    pvs: np.ndarray = None  # type: ignore[assignment]
    pve: np.ndarray = None  # type: ignore[assignment]


@njit(cache=True)
def _scan(data, starts, ends, parent, fieldno, ftype, leaf, ch_start, ch_count, children,
          nleaves, depth, wire_of, first_leaf, packable, repeated, target, occ):  # fmt: skip
    """`repeated`: a field or path message that occurs again marks the record in `rep` instead
    of being an error (E_DUP); the first occurrences are located, and `cnt` counts each field's.
    `target` >= 0: locate only occurrence `occ[r]` of that field (document order) and the path
    messages that enclose that occurrence. Each element of a packed block is an occurrence."""
    n = starts.shape[0]
    nn = parent.shape[0]
    cnt = np.zeros((n, max(nleaves, 1)), np.int32)
    rep = np.zeros(n, np.bool_)
    st_ls = np.zeros(depth + 1, np.int64)  # the open path messages' instance spans
    st_vs = np.zeros(depth + 1, np.int64)
    st_ve = np.zeros(depth + 1, np.int64)
    vstart = np.zeros((n, nleaves), np.int64)
    vend = np.zeros((n, nleaves), np.int64)
    vkind = np.zeros((n, nleaves), np.int8)
    fstart = np.zeros((n, nleaves), np.int64)
    lstart = np.zeros((n, nleaves), np.int64)
    pts = np.zeros((n, nleaves), np.int64)
    pls = np.zeros((n, nleaves), np.int64)
    pvs = np.full((n, nleaves), -1, np.int64)
    pve = np.zeros((n, nleaves), np.int64)
    mls = np.zeros((n, nn), np.int64)
    mvs = np.zeros((n, nn), np.int64)
    mve = np.zeros((n, nn), np.int64)
    mseen = np.zeros((n, nn), np.bool_)
    body = np.zeros(n, np.int64)
    err = np.zeros(n, np.int8)
    errpos = np.zeros(n, np.int64)
    errfield = np.full(n, -1, np.int64)
    snode = np.zeros(depth + 1, np.int64)
    send = np.zeros(depth + 1, np.int64)
    for r in range(n):
        s = starts[r]
        e = ends[r]
        code = 0
        efield = -1
        ln, p = _varint(data, s, e)
        if p < 0 or p + np.int64(ln) != e:
            code = E_TOO_BIG if (p >= 0 and ln > np.uint64(MAX_MESSAGE)) else E_FRAMING
            p = s
        body[r] = p
        d = 0
        snode[0] = 0
        send[0] = e
        while code == 0:
            if p == send[d]:
                if d == 0:
                    break
                d -= 1
                continue
            ts = p
            tag, p = _varint(data, p, send[d])
            if p < 0:
                code = E_WIRE
                p = ts
                break
            fno = np.int64(tag >> np.uint64(3))
            wt = np.int64(tag & np.uint64(7))
            if fno == 0 or fno > 536870911:
                code = E_WIRE
                p = ts
                break
            ls = p
            if wt == 0:
                _, q = _varint(data, p, send[d])
                if q < 0:
                    code = E_WIRE
                    break
                vs, ve = p, q
            elif wt == 1:
                vs, ve = p, p + 8
            elif wt == 5:
                vs, ve = p, p + 4
            elif wt == 2:
                m, q = _varint(data, p, send[d])
                if q < 0 or m > np.uint64(send[d] - q):
                    code = E_WIRE
                    break
                vs, ve = q, q + np.int64(m)
            elif wt == 3 or wt == 4:
                code = E_GROUP
                p = ts
                break
            else:
                code = E_WIRE
                p = ts
                break
            if ve > send[d]:
                code = E_WIRE
                break
            node = snode[d]
            c = -1
            for k in range(ch_start[node], ch_start[node] + ch_count[node]):
                if fieldno[children[k]] == fno:
                    c = children[k]
                    break
            if c >= 0:
                t = ftype[c]
                packed = wt == 2 and packable[c]
                if wt != wire_of[t] and not packed:
                    code = E_TYPE
                    efield = first_leaf[c]
                    p = ts
                    break
                if t == 0:  # a message on a policy path: descend
                    if target < 0:
                        if mseen[r, c] and not repeated:
                            code = E_DUP
                            efield = first_leaf[c]
                            p = ts
                            break
                        if mseen[r, c]:
                            rep[r] = True
                        else:
                            mseen[r, c] = True
                            mls[r, c] = ls
                            mvs[r, c] = vs
                            mve[r, c] = ve
                    st_ls[d + 1] = ls
                    st_vs[d + 1] = vs
                    st_ve[d + 1] = ve
                    d += 1
                    snode[d] = c
                    send[d] = ve
                    p = vs
                    continue
                lf = leaf[c]
                # a packed block's elements: varints, or 4 / 8 bytes each (encoding reference,
                # "Packed Repeated Fields"); an unpacked value is one element
                width = 4 if wire_of[t] == 5 else (8 if wire_of[t] == 1 else 0)
                if packed and width > 0 and (ve - vs) % width != 0:
                    code = E_PACKED
                    efield = lf
                    p = ts
                    break
                es = vs
                while code == 0 and (es < ve or not packed):
                    ee = ve
                    if packed:
                        if width > 0:
                            ee = es + width
                        else:
                            _, ee = _varint(data, es, ve)
                            if ee < 0:
                                code = E_PACKED
                                efield = lf
                                p = ts
                                break
                    seen = cnt[r, lf]
                    cnt[r, lf] += 1
                    if seen > 0 and not repeated:
                        code = E_DUP
                        efield = lf
                        p = ts
                        break
                    if seen > 0:
                        rep[r] = True
                    take = (seen == 0) if target < 0 else (lf == target and seen == occ[r])
                    kind = K_NUMBER
                    if t == 1:  # string
                        q = es
                        while q < ee:
                            if data[q] < 128:
                                q += 1
                            else:
                                k2 = seq_len(data, q, ee)
                                if k2 == 0:
                                    break
                                q += k2
                        if q < ee:
                            code = E_UTF8
                            efield = lf
                            p = ts
                            break
                        kind = K_STRING
                    elif t == 8:  # bool
                        kind = K_FALSE
                        for q in range(es, ee):
                            if data[q] & 0x7F:
                                kind = K_TRUE
                    if take:
                        vstart[r, lf] = es
                        vend[r, lf] = ee
                        vkind[r, lf] = kind
                        # an element of a packed block is removed alone, without a tag
                        fstart[r, lf] = es if packed else ts
                        lstart[r, lf] = es if packed else ls
                        if packed:
                            pts[r, lf] = ts
                            pls[r, lf] = ls
                            pvs[r, lf] = vs
                            pve[r, lf] = ve
                        if target >= 0:  # the path messages around this occurrence
                            for k in range(1, d + 1):
                                mn = snode[k]
                                mseen[r, mn] = True
                                mls[r, mn] = st_ls[k]
                                mvs[r, mn] = st_vs[k]
                                mve[r, mn] = st_ve[k]
                    if not packed:
                        break
                    es = ee
                if code != 0:
                    break
            p = ve
        if code != 0:
            err[r] = code
            errpos[r] = p - s
            errfield[r] = efield
            rep[r] = False
            for j in range(nleaves):
                vkind[r, j] = K_MISSING
                cnt[r, j] = 0
    return (vstart, vend, vkind, err, errpos, errfield, fstart, lstart, body, mls, mvs, mve, mseen,
            cnt, rep, pts, pls, pvs, pve)  # fmt: skip


def _first_leaf(lay: ProtoLayout) -> np.ndarray:
    fl = np.full(len(lay.parent), -1, np.int64)
    for node in range(len(lay.parent) - 1, -1, -1):
        if lay.leaf[node] >= 0:
            fl[node] = lay.leaf[node]
        p = lay.parent[node]
        if p >= 0 and fl[node] >= 0 and (fl[p] < 0 or fl[node] < fl[p]):
            fl[p] = fl[node]
    return fl


def scan(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, lay: ProtoLayout,
    repeated: bool = True, target: int = -1, occ: int | np.ndarray = 0,
) -> ProtoScan:  # fmt: skip
    """Validate each frame and locate the layout's fields (spans of the values' bytes).

    A field that occurs more than once in a record (a repeated field with several elements, or
    a field inside a repeated message on its path) marks the record in `sc.rep`, and `sc.counts`
    (n, leaves) says how often each field occurs: such a record is masked one occurrence at a
    time, by scans with `target` (a field) and `occ` (its occurrence, in document order) that
    locate that occurrence and the message instances around it, for `emit` to fix their
    lengths; `occ` may differ per record (an array). `repeated=False` makes a second
    occurrence an error (E_DUP) instead.

    A repeated numeric field is read in both encodings, even mixed in one record: unpacked
    (one tag per element) and packed (one length-delimited block of elements); each element of
    a packed block is one occurrence, located with the block around it (`sc.pvs` >= 0), whose
    length prefix `emit` fixes. A packed block that is cut off inside a varint, or whose length
    is not a multiple of its fixed element size, is an error (E_PACKED)."""
    occ_r = np.broadcast_to(np.asarray(occ, np.int64), (len(starts),))
    out = _scan(
        data, starts, ends, lay.parent, lay.fieldno, lay.ftype, lay.leaf, lay.ch_start,
        lay.ch_count, lay.children, len(lay.paths), lay.depth, _WIRE_OF, _first_leaf(lay),
        lay.packable, repeated, target, np.ascontiguousarray(occ_r),
    )  # fmt: skip
    sc = ProtoScan(starts, ends, *out[:13])
    sc.counts, sc.rep = out[13], out[14]  # type: ignore[attr-defined]
    sc.pts, sc.pls, sc.pvs, sc.pve = out[15:]
    return sc


# ---------------------------------------------------------------- extract


@njit(cache=True)
def _gather(data, vstart, vend, ok):
    n = vstart.shape[0]
    total = 0
    for i in range(n):
        if ok[i]:
            total += vend[i] - vstart[i]
    out = np.empty(max(total, 1), np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        if ok[i]:
            for q in range(vstart[i], vend[i]):
                out[o] = data[q]
                o += 1
        off[i + 1] = o
    return off, out[:o]


@njit(cache=True)
def _numbers(data, vstart, ok, t):
    """Decode one numeric field per record: (int64, uint64, float64) arrays, one of them used."""
    n = vstart.shape[0]
    ints = np.zeros(n, np.int64)
    uints = np.zeros(n, np.uint64)
    floats = np.zeros(n, np.float64)
    for i in range(n):
        if not ok[i]:
            continue
        p = vstart[i]
        if t == 10 or t == 12 or t == 14:  # fixed32, sfixed32, float: 4 little-endian bytes
            u = np.uint32(0)
            for k in range(4):
                u |= np.uint32(data[p + k]) << np.uint32(8 * k)
            if t == 10:
                uints[i] = np.uint64(u)
            elif t == 12:
                ints[i] = np.int64(np.int32(u))
            else:
                floats[i] = np.float64(np.array([u], np.uint32).view(np.float32)[0])
        elif t == 11 or t == 13 or t == 15:  # fixed64, sfixed64, double
            u = np.uint64(0)
            for k in range(8):
                u |= np.uint64(data[p + k]) << np.uint64(8 * k)
            if t == 11:
                uints[i] = u
            elif t == 13:
                ints[i] = np.int64(u)
            else:
                floats[i] = np.array([u], np.uint64).view(np.float64)[0]
        else:
            v, _ = _varint(data, p, p + 10 if p + 10 <= data.shape[0] else data.shape[0])
            if t == 6 or t == 7:  # zigzag
                ints[i] = np.int64(v >> np.uint64(1)) ^ -np.int64(v & np.uint64(1))
            elif t == 4 or t == 5:
                uints[i] = v if t == 5 else v & np.uint64(0xFFFFFFFF)
            elif t == 2 or t == 9:  # int32, enum: the low 32 bits, sign-extended
                ints[i] = np.int64(np.int32(np.uint32(v & np.uint64(0xFFFFFFFF))))
            else:
                ints[i] = np.int64(v)
    return ints, uints, floats


def extract_columns(
    data: np.ndarray, sc: ProtoScan, lay: ProtoLayout, leaves: list[int]
) -> list[pa.Array]:
    """The fields' values as large_string columns: strings as they are, numbers as their decimal
    text (Arrow's cast: shortest round-trip text for floats), booleans as true/false."""
    cols = []
    for lf in leaves:
        kinds = sc.vkind[:, lf]
        ok = kinds != K_MISSING
        t = int(lay.ftype[lay.leaf_node[lf]])
        if t == T_STRING:
            off, out = _gather(data, sc.vstart[:, lf], sc.vend[:, lf], ok)
            cols.append(string_array(off, out, ok))
            continue
        if t == T_BOOL:
            arr = pa.array(kinds == K_TRUE, mask=~ok)
            cols.append(pc.cast(arr, pa.large_string()))
            continue
        ints, uints, floats = _numbers(data, sc.vstart[:, lf], ok, t)
        if t == T_FLOAT:
            arr = pa.array(floats.astype(np.float32), mask=~ok)
        elif t == T_DOUBLE:
            arr = pa.array(floats, mask=~ok)
        elif t in (T_UINT32, T_UINT64, T_FIXED32, T_FIXED64):
            arr = pa.array(uints, mask=~ok)
        else:
            arr = pa.array(ints, mask=~ok)
        cols.append(pc.cast(arr, pa.large_string()))
    return cols


# ---------------------------------------------------------------- encode


_INT_RANGE = {
    T_INT32: (-(2**31), 2**31 - 1), T_SINT32: (-(2**31), 2**31 - 1),
    T_SFIXED32: (-(2**31), 2**31 - 1), T_ENUM: (-(2**31), 2**31 - 1),
    T_UINT32: (0, 2**32 - 1), T_FIXED32: (0, 2**32 - 1),
    T_INT64: (-(2**63), 2**63 - 1), T_SINT64: (-(2**63), 2**63 - 1),
    T_SFIXED64: (-(2**63), 2**63 - 1), T_UINT64: (0, 2**64 - 1), T_FIXED64: (0, 2**64 - 1),
}  # fmt: skip


class EncodeError(ValueError):
    """A masked value does not fit its field's protobuf type (names the field, not the value)."""


def _as_numbers(values: pa.Array, t: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 bit pattern per value, validity) of numeric text in a field of type t."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    try:
        if t in (T_FLOAT, T_DOUBLE):
            f = pc.cast(values, pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
            if t == T_FLOAT:
                bits = f.astype(np.float32).view(np.uint32).astype(np.uint64)
            else:
                bits = f.view(np.uint64)
            return bits, valid
        if t == T_BOOL:
            b = pc.equal(values, "true").fill_null(False).to_numpy(zero_copy_only=False)
            return b.astype(np.uint64), valid
        lo, hi = _INT_RANGE[t]
        big = pa.uint64() if lo == 0 else pa.int64()
        try:
            xv = pc.cast(values, big).fill_null(0).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # decimals, exponents, or below 0 for an unsigned type: round
            f = pc.cast(values, pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
            if np.isnan(f).any():
                raise pa.ArrowInvalid("NaN") from None
            top = float(hi) if float(hi) <= hi else np.nextafter(float(hi), 0.0)
            xv = np.clip(np.rint(f), float(lo), top).astype(np.uint64 if lo == 0 else np.int64)
        # A value out of the type's range (noise on an unsigned or 32-bit field: Laplace noise
        # has no bounds) saturates to the nearest value of the type, a post-processing of the
        # noised value; failing the batch lost all of its records.
        if len(xv) and (xv.min() < lo or xv.max() > hi):
            xv = np.clip(xv, lo, hi)
        if t in (T_SINT32, T_SINT64):
            v = xv.astype(np.int64)
            return ((v << 1) ^ (v >> 63)).view(np.uint64), valid
        if t in (T_SFIXED32, T_FIXED32):
            return (xv.astype(np.int64) & 0xFFFFFFFF).astype(np.uint64), valid
        return xv.astype(np.int64).view(np.uint64) if big == pa.int64() else xv, valid
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise EncodeError(
            f"field {path}: a masked value is not a {TYPE_NAMES[t]} "
            "(use keep, redact, generalize or noise on numeric fields)"
        ) from None


@njit(cache=True)
def _encode(t, bits, valid, str_off, str_data):
    """Each value's encoding after its tag: varint length + bytes, varint, or fixed width."""
    n = valid.shape[0]
    cap = 0
    for i in range(n):
        cap += 14 + (str_off[i + 1] - str_off[i] if t == 1 else 0)
    out = np.empty(cap + 1, np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        if valid[i]:
            if t == 1:
                ln = str_off[i + 1] - str_off[i]
                o = _put_varint(out, o, np.uint64(ln))
                for q in range(str_off[i], str_off[i + 1]):
                    out[o] = str_data[q]
                    o += 1
            elif t == 10 or t == 12 or t == 14:
                for k in range(4):
                    out[o] = np.uint8((bits[i] >> np.uint64(8 * k)) & np.uint64(0xFF))
                    o += 1
            elif t == 11 or t == 13 or t == 15:
                for k in range(8):
                    out[o] = np.uint8((bits[i] >> np.uint64(8 * k)) & np.uint64(0xFF))
                    o += 1
            else:
                o = _put_varint(out, o, bits[i])
        off[i + 1] = o
    return off, out[:o]


def encode_values(values: pa.Array, t: int, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, bytes, valid): the wire encoding of each value after its tag; null = remove."""
    if t == T_STRING:
        b = string_buffers(pc.cast(values, pa.large_string()))
        off, out = _encode(t, np.zeros(len(b), np.uint64), b.valid, b.offsets, b.data)
        return off, out, b.valid
    bits, valid = _as_numbers(pc.cast(values, pa.large_string()), t, path)
    off, out = _encode(
        t,
        np.ascontiguousarray(bits, np.uint64),
        valid,
        np.zeros(1, np.int64),
        np.zeros(1, np.uint8),
    )
    return off, out, valid


@njit(cache=True)
def _emit(data, starts, ends, emit, body, parent, nodes_inner, lnode, fstart, lstart, vend, edit,
          rep_off, rep_data, rep_valid, mls, mvs, mve, mseen, pts, pls, pvs, pve, prefix):  # fmt: skip
    n = starts.shape[0]
    nn = parent.shape[0]
    k = lnode.shape[0]
    nops_max = 2 * k + nodes_inner.shape[0]
    op_s = np.empty(nops_max, np.int64)
    op_e = np.empty(nops_max, np.int64)
    # < k: edited column; >= k: the length prefix of column (src - k)'s packed block;
    # < 0: the length prefix of inner node -(src) - 1
    op_src = np.empty(nops_max, np.int64)
    new_len = np.zeros(nn, np.int64)
    block_len = np.zeros(max(k, 1), np.int64)
    delta = np.zeros(nn, np.int64)
    sizes = np.zeros(n, np.int64)
    for phase in range(2):
        if phase == 1:
            total = 0
            for i in range(n):
                total += sizes[i]
            out = np.empty(max(total, 1), np.uint8)
            off = np.zeros(n + 1, np.int64)
        o = 0
        for i in range(n):
            if not emit[i]:
                if phase == 1:
                    off[i + 1] = o
                continue
            delta[:] = 0
            m = 0
            for c in range(k):
                if edit[i, c]:
                    a = lstart[i, c] if rep_valid[c, i] else fstart[i, c]
                    rl = rep_off[c, i + 1] - rep_off[c, i] if rep_valid[c, i] else 0
                    dl = rl - (vend[i, c] - a)
                    e = vend[i, c]
                    bs = pvs[i, c]
                    if bs >= 0 and dl != 0:  # an element of a packed block
                        if a == bs and e == pve[i, c] and not rep_valid[c, i]:
                            # its only element removed: the field goes, as the library writes
                            # no field for a repeated one without elements
                            a = pts[i, c]
                            dl = -(e - a)
                        else:
                            nl = pve[i, c] - bs + dl
                            block_len[c] = nl
                            dl += _vsize(np.uint64(nl)) - (bs - pls[i, c])
                            op_s[m] = pls[i, c]
                            op_e[m] = bs
                            op_src[m] = k + c
                            m += 1
                    delta[parent[lnode[c]]] += dl
                    op_s[m] = a
                    op_e[m] = e
                    op_src[m] = c
                    m += 1
            for j in range(nodes_inner.shape[0] - 1, -1, -1):  # children before parents
                c = nodes_inner[j]
                if mseen[i, c] and delta[c] != 0:
                    old = mve[i, c] - mvs[i, c]
                    new = old + delta[c]
                    new_len[c] = new
                    delta[parent[c]] += delta[c] + _vsize(np.uint64(new)) - (mvs[i, c] - mls[i, c])
                    op_s[m] = mls[i, c]
                    op_e[m] = mvs[i, c]
                    op_src[m] = -c - 1
                    m += 1
            blen = ends[i] - body[i] + delta[0]
            if phase == 0:
                sizes[i] = blen + (_vsize(np.uint64(blen)) if prefix else 0)
                continue
            for a in range(1, m):  # sort the few edits by position
                b = a
                while b > 0 and op_s[b - 1] > op_s[b]:
                    op_s[b - 1], op_s[b] = op_s[b], op_s[b - 1]
                    op_e[b - 1], op_e[b] = op_e[b], op_e[b - 1]
                    op_src[b - 1], op_src[b] = op_src[b], op_src[b - 1]
                    b -= 1
            if prefix:
                o = _put_varint(out, o, np.uint64(blen))
            p = body[i]
            for j in range(m):
                for q in range(p, op_s[j]):
                    out[o] = data[q]
                    o += 1
                src = op_src[j]
                if src >= k:
                    o = _put_varint(out, o, np.uint64(block_len[src - k]))
                elif src >= 0:
                    if rep_valid[src, i]:
                        for q in range(rep_off[src, i], rep_off[src, i + 1]):
                            out[o] = rep_data[q]
                            o += 1
                else:
                    o = _put_varint(out, o, np.uint64(new_len[-src - 1]))
                p = op_e[j]
            for q in range(p, ends[i]):
                out[o] = data[q]
                o += 1
            off[i + 1] = o
    return off, out[:o]


def emit(
    data: np.ndarray,
    sc: ProtoScan,
    lay: ProtoLayout,
    emit_mask: np.ndarray,
    edited: list[int],
    edit: np.ndarray,
    values: list[pa.Array],
    prefix: bool = True,
) -> pa.Array:
    """Emitted records (delimited frames when `prefix`) with the `edited` leaves re-encoded from
    `values` where `edit` is set, enclosing lengths fixed up, every other byte kept. A leaf
    located in a packed block is one element: re-encoded alone, or dropped when null, with the
    block's length prefix fixed."""
    n = len(sc.starts)
    k = len(edited)
    rep_off = np.zeros((max(k, 1), n + 1), np.int64)
    rep_valid = np.zeros((max(k, 1), n), np.bool_)
    chunks = []
    base = 0
    for c, (lf, vals) in enumerate(zip(edited, values, strict=True)):
        t = int(lay.ftype[lay.leaf_node[lf]])
        o, d, v = encode_values(vals, t, lay.paths[lf])
        rep_off[c] = o + base
        rep_valid[c] = v
        chunks.append(d)
        base += len(d)
    rep_data = np.concatenate(chunks) if chunks and base else np.zeros(1, np.uint8)
    cols = np.array(edited, np.int64)
    inner = np.array(
        [i for i in range(len(lay.parent)) if lay.leaf[i] < 0 and i > 0] or [], np.int64
    )
    lnode = lay.leaf_node[cols] if k else np.zeros(0, np.int64)

    def pick(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, cols]) if k else np.zeros((n, 0), np.int64)

    # an absent field stays absent (there is no span to edit)
    present = (edit & (pick(sc.vkind) != K_MISSING)) if k else np.zeros((n, 0), np.bool_)

    off, out = _emit(
        data, sc.starts, sc.ends, emit_mask, sc.body, lay.parent, inner, lnode, pick(sc.fstart),
        pick(sc.lstart), pick(sc.vend), present,
        rep_off, rep_data, rep_valid, sc.mls, sc.mvs, sc.mve, sc.mseen, pick(sc.pts),
        pick(sc.pls), pick(sc.pvs), pick(sc.pve), prefix,
    )  # fmt: skip
    return string_array(off, out, None, binary=True)


@njit(cache=True)
def _field_end(data, p, end):
    """(tag start, after tag, value start, value end, field number, wire type) of the field at
    p; value end -1 when it cannot be read."""
    tag, q = _varint(data, p, end)
    if q < 0:
        return p, -1, -1, -1, 0, 0
    fno = np.int64(tag >> np.uint64(3))
    wt = np.int64(tag & np.uint64(7))
    if wt == 0:
        _, r = _varint(data, q, end)
        return p, q, q, r, fno, wt
    if wt == 1:
        return p, q, q, q + 8, fno, wt
    if wt == 5:
        return p, q, q, q + 4, fno, wt
    if wt == 2:
        m, r = _varint(data, q, end)
        if r < 0 or m > np.uint64(end - r):  # a length past the end (or one that would be < 0
            return p, q, -1, -1, fno, wt  # as int64, which once walked a frame backwards)
        return p, q, r, r + np.int64(m), fno, wt
    return p, q, -1, -1, fno, wt


@njit(cache=True)
def _drop(data, offsets, parent, fieldno, ftype, leaf, ch_start, ch_count, children, depth):
    """Each frame with only the fields on the layout's paths (every instance of a repeated
    one), length prefixes recomputed: two walks per frame, the first sizing each kept message
    instance (in visiting order), the second writing."""
    n = offsets.shape[0] - 1
    out = np.empty(offsets[n] - offsets[0] + 16, np.uint8)
    off = np.zeros(n + 1, np.int64)
    cap = 64
    sizes = np.zeros(cap, np.int64)
    snode = np.zeros(depth + 2, np.int64)
    send = np.zeros(depth + 2, np.int64)
    sidx = np.zeros(depth + 2, np.int64)  # the open instance's index in `sizes`
    acc = np.zeros(depth + 2, np.int64)
    o = 0
    for r in range(n):
        s = offsets[r]
        e = offsets[r + 1]
        if e == s:  # a record not emitted
            off[r + 1] = o
            continue
        ln, b = _varint(data, s, e)
        for walk in range(2):
            k = 0  # instances seen
            d = 0
            snode[0] = 0
            send[0] = e
            acc[0] = 0
            p = b
            if walk == 1:
                o = _put_varint(out, o, np.uint64(sizes[0]))
                k = 1
            else:
                k = 1
            while True:
                if p >= send[d]:
                    if d == 0:
                        break
                    if walk == 0:
                        sz = acc[d]
                        sizes[sidx[d]] = sz
                        acc[d - 1] += sz + _vsize(np.uint64(sz))
                    d -= 1
                    continue
                ts, q, vs, ve, fno, wt = _field_end(data, p, send[d])
                if ve <= p or ve > send[d]:
                    break  # cannot happen for an emitted record; stop rather than loop
                node = snode[d]
                c = -1
                for j in range(ch_start[node], ch_start[node] + ch_count[node]):
                    if fieldno[children[j]] == fno:
                        c = children[j]
                        break
                if c >= 0 and ftype[c] == 0 and wt == 2 and leaf[c] < 0:  # a path message
                    if walk == 0:
                        if k == cap:
                            cap *= 2
                            s2 = np.zeros(cap, np.int64)
                            s2[:k] = sizes[:k]
                            sizes = s2
                        acc[d] += q - ts  # its tag; its length prefix when it closes
                    else:
                        for t in range(ts, q):
                            out[o] = data[t]
                            o += 1
                        o = _put_varint(out, o, np.uint64(sizes[k]))
                    sidx[d + 1] = k
                    k += 1
                    d += 1
                    snode[d] = c
                    send[d] = ve
                    acc[d] = 0
                    p = vs
                    continue
                if c >= 0 and leaf[c] >= 0:  # a named field: kept whole
                    if walk == 0:
                        acc[d] += ve - ts
                    else:
                        for t in range(ts, ve):
                            out[o] = data[t]
                            o += 1
                p = ve
            if walk == 0:
                sizes[0] = acc[0]
        off[r + 1] = o
    return off, out[:o]


def drop_unknown(records: pa.Array, lay: ProtoLayout) -> pa.Array:
    """Emitted frames with only the fields on the layout's paths: what `unknown_fields: drop`
    writes (unknown fields and every field the policy does not name are left out). Empty
    entries (records not emitted) stay empty."""
    b = string_buffers(records)
    off, out = _drop(b.data, b.offsets, lay.parent, lay.fieldno, lay.ftype, lay.leaf,
                     lay.ch_start, lay.ch_count, lay.children, lay.depth)  # fmt: skip
    return string_array(off, out, None, binary=True)


def load_descriptor_set(options: dict) -> bytes:
    """The compiled descriptor set a stream's `protobuf:` options name: the `descriptor_set`
    file's bytes, or its `proto` file compiled with protoc. OSError / ValueError when missing."""
    if options.get("descriptor_set"):
        return Path(options["descriptor_set"]).read_bytes()
    return compile_proto(options["proto"], options.get("include") or [])
