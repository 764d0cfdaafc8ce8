"""File source: reads a file (or stdin) in large chunks that end on record boundaries."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from raymask.errors import InputError
from raymask.kernels.codecs.formats import Format, format_for

__all__ = ["Chunk", "FileSource", "open_input"]

MAX_PROLOG = 64 << 20


def protobuf_format(path: str, options: dict) -> Format:
    """The Protobuf format of a stream's `protobuf:` options (the schema loaded or compiled);
    InputError naming what cannot be read. `path` names the input in messages."""
    from raymask.kernels.codecs.protobuf import load_descriptor_set

    try:
        ds = load_descriptor_set(options)
    except OSError as exc:
        what = options.get("descriptor_set") or options.get("proto")
        raise InputError(f"{what}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        return format_for("protobuf", options={**options, "descriptor_set": ds})
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None


@dataclass
class Chunk:
    data: np.ndarray  # uint8, whole records only
    base_line: int  # line number of data[0]
    nbytes: int
    offset: int | None = None  # where data[0] is in the input file (None: not a plain file)


def open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not a file")
    try:
        return open(p, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _regular(f: BinaryIO) -> bool:
    """A regular file, which another process can read at an offset (not a pipe or a device)."""
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError):
        return False


class FileSource:
    """Chunks of about `chunk_bytes` from a file; for CSV the header line is read first."""

    def __init__(
        self, path: str, fmt_name: str, *, delimiter: str = ",", chunk_bytes: int = 4 << 20,
        stream: BinaryIO | None = None, follow: bool = False, poll_seconds: float = 0.2,
        options: dict | None = None,
    ) -> None:  # fmt: skip
        """`options`: the stream's `xml:` or `protobuf:` settings (StreamPlan.format_options)."""
        self.path = path
        self.follow = follow
        self.poll_seconds = poll_seconds
        self._stopped = False
        self.chunk_bytes = chunk_bytes
        self._f = stream if stream is not None else open_input(path)
        self.bytes_total = Path(path).stat().st_size if (stream is None and path != "-") else 0
        self._line = 1
        self._pending = b""
        # a plain file's chunks say where they are in it (the mask workers may read them there)
        self._at: int | None = 0 if (stream is None and path != "-" and _regular(self._f)) else None
        if fmt_name == "csv":
            header = self._f.readline()
            self.header_line: bytes | None = header
            if not header.strip():
                raise InputError(f"{path}: CSV input has no header line")
            self._line = 2
            try:
                self.format: Format = format_for("csv", header_line=header, delimiter=delimiter)
            except (UnicodeDecodeError, StopIteration):
                raise InputError(f"{path}:1: CSV header is not valid UTF-8 text") from None
            except ValueError as exc:  # a column named twice
                raise InputError(f"{path}:1: {exc}") from None
        elif fmt_name == "xml":
            self.header_line = None
            self.format = self._xml_prolog(options or {})
        elif fmt_name == "protobuf":
            self.header_line = None
            self.format = protobuf_format(path, options or {})
        else:
            self.header_line = None
            self.format = format_for(fmt_name)

    def _xml_prolog(self, options: dict) -> Format:
        """Read up to the first record: that prolog is the output's header, read once; the
        records then come in chunks that start on a record. DOCTYPEs are refused here."""
        from raymask.kernels.codecs import xml as xml_codec

        fmt = format_for("xml", options=options)
        lay = fmt.layout(())  # type: ignore[attr-defined]
        buf = b""
        while True:
            block = self._f.read(1 << 20)
            buf += block
            cut = xml_codec.find_prolog(np.frombuffer(buf, np.uint8), lay)
            if cut >= 0 or not block:
                break
            if len(buf) > MAX_PROLOG:
                raise InputError(f"{self.path}: no record element in the first 64 MiB")
        prolog = buf if cut < 0 else buf[:cut]
        try:
            xml_codec.check_prolog(prolog, options.get("namespaces") or {}, options["record"])
        except xml_codec.XmlError as exc:
            raise InputError(f"{self.path}: {exc}") from None
        self._pending = b"" if cut < 0 else buf[cut:]
        self._line = 1 + prolog.count(b"\n")
        return format_for("xml", options=options, prolog=prolog)

    def stop(self) -> None:
        """End a followed input: the records read so far are finished, then chunks() returns."""
        self._stopped = True

    def chunks(self) -> Iterator[Chunk | None]:
        """Chunks of whole records. When following, end of file means "wait for more": the whole
        records read so far are handed on at once (low latency), a partial last line waits for
        its newline, and the iteration ends only after stop()."""
        fmt = self.format
        if self._at is not None:
            self._at = self._f.tell() - len(self._pending)  # after a CSV header or XML prolog
        while True:
            # the pending tail and the next block, read into one new array: a chunk is a view of
            # it, so its bytes are copied once (by the read), not three times (read, the tail
            # joined in front, the whole records cut off)
            keep = len(self._pending)
            arr = np.empty(keep + self.chunk_bytes, np.uint8)
            arr[:keep] = np.frombuffer(self._pending, np.uint8)
            got = self._f.readinto(memoryview(arr)[keep:]) or 0
            data = arr[: keep + got]
            if not got:
                if self.follow and not self._stopped:
                    cut = fmt.boundary(data) if len(data) else -1
                    if cut > 0:
                        self._pending = data[cut:].tobytes()
                        yield self._emit(data[:cut])
                    else:
                        self._pending = data.tobytes()
                        time.sleep(self.poll_seconds)
                        yield None  # idle: the pipeline finishes what it holds meanwhile
                    continue
                if len(data):
                    self._pending = b""
                    yield self._emit(data)
                return
            cut = fmt.boundary(data)
            if cut <= 0:
                self._pending = data.tobytes()
                continue
            self._pending = data[cut:].tobytes()
            yield self._emit(data[:cut])

    def _emit(self, data: np.ndarray) -> Chunk:
        base, at = self._line, self._at
        self._line += self.format.units(data)
        if at is not None:
            self._at = at + len(data)
        return Chunk(data, base, len(data), at)

    @classmethod
    def from_bytes(
        cls, data: bytes, fmt_name: str, *, delimiter: str = ",", name: str = "<memory>",
        options: dict | None = None,
    ) -> FileSource:  # fmt: skip
        """A source over bytes in memory (replays: decrypted records never touch the disk)."""
        import io

        return cls(name, fmt_name, delimiter=delimiter, stream=io.BytesIO(data), options=options)

    def close(self) -> None:
        if self._f is not sys.stdin.buffer:
            self._f.close()
