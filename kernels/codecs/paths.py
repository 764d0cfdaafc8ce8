"""The policy's field paths as a flat tree of arrays that Numba scanners walk.

Node 0 is the record itself. Leaves (the policy's fields) are numbered in the order given, and
the tree is laid out so that the leaves under any node form the contiguous range
``leaf_lo[node]:leaf_hi[node]`` of `preorder_leaves`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

__all__ = ["PathTree", "build_tree"]


@dataclass(frozen=True)
class PathTree:
    paths: tuple[str, ...]  # leaf index -> dotted path
    ch_start: np.ndarray  # node -> first index into `children`
    ch_count: np.ndarray  # node -> number of children
    children: np.ndarray  # child node ids, grouped by parent
    key_start: np.ndarray  # node -> start of its raw (decoded) key in `keybytes`
    key_len: np.ndarray
    keybytes: np.ndarray  # uint8
    leaf: np.ndarray  # node -> leaf index, or -1 for an inner node
    json_key: tuple[bytes, ...]  # node -> '"key":' as JSON, for rebuilding objects
    parent: np.ndarray
    max_key_len: int


def build_tree(paths: list[str] | tuple[str, ...]) -> PathTree:
    """Tree of `paths` ('a.b.c'); a path may not be a prefix of another (checked by the schema)."""
    names: list[str] = [""]
    parent: list[int] = [-1]
    kids: list[list[int]] = [[]]
    leaf: list[int] = [-1]
    for li, path in enumerate(paths):
        node = 0
        parts = path.split(".")
        for depth, part in enumerate(parts):
            found = -1
            for c in kids[node]:
                if names[c] == part:
                    found = c
                    break
            if found < 0:
                found = len(names)
                names.append(part)
                parent.append(node)
                kids.append([])
                leaf.append(-1)
                kids[node].append(found)
            node = found
            if depth == len(parts) - 1:
                if leaf[node] >= 0 or kids[node]:
                    raise ValueError(f"path {path!r} overlaps another path")
                leaf[node] = li
            elif leaf[node] >= 0:
                raise ValueError(f"path {path!r} overlaps another path")
    nn = len(names)
    ch_start = np.zeros(nn, np.int64)
    ch_count = np.zeros(nn, np.int64)
    children: list[int] = []
    for i in range(nn):
        ch_start[i] = len(children)
        ch_count[i] = len(kids[i])
        children.extend(kids[i])
    enc = [n.encode("utf-8") for n in names]
    key_start = np.zeros(nn, np.int64)
    key_len = np.zeros(nn, np.int64)
    pos = 0
    for i, e in enumerate(enc):
        key_start[i] = pos
        key_len[i] = len(e)
        pos += len(e)
    keybytes = np.frombuffer(b"".join(enc), dtype=np.uint8).copy() if pos else np.zeros(1, np.uint8)
    json_key = tuple(
        (json.dumps(n, ensure_ascii=False) + ":").encode("utf-8") if i else b""
        for i, n in enumerate(names)
    )
    return PathTree(
        paths=tuple(paths),
        ch_start=ch_start,
        ch_count=ch_count,
        children=np.array(children or [0], dtype=np.int64),
        key_start=key_start,
        key_len=key_len,
        keybytes=keybytes,
        leaf=np.array(leaf, dtype=np.int64),
        json_key=json_key,
        parent=np.array(parent, dtype=np.int64),
        max_key_len=max((len(e) for e in enc), default=0),
    )
