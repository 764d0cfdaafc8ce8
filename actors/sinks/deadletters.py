"""Dead letters: records that could not be masked, kept encrypted, with their reason.

One JSON object per line::

    {"stream": "payments", "line": 12, "reason": "field card.number: not a payment card number ...",
     "field": "card.number", "key": "deadletter", "key_version": 1,
     "nonce": "<base64>", "ciphertext": "<base64>"}

The original record is sealed with AES-GCM (cryptography's AESGCM) under the dead-letter key from
the keyring; the stream and line are bound as associated data, so an entry cannot be moved to
another line unnoticed. Reasons name fields and problems, never values.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from raymask.actors.router import DeadLetter
from raymask.errors import InputError, KeyringError
from raymask.policy.keys import Key, Keyring

__all__ = [
    "DeadLetterWriter",
    "OpenedDeadLetter",
    "read_dead_letters",
    "seal",
    "open_entry",
    "DEFAULT_KEY_ID",
]

DEFAULT_KEY_ID = "deadletter"


def _aead_key(key: Key) -> AESGCM:
    material = key.material
    if len(material) not in (16, 24, 32):
        import hashlib

        material = hashlib.sha256(b"raymask dead letters\0" + material).digest()
    return AESGCM(material)


def _aad(stream: str, line: int, where: str | None = None) -> bytes:
    base = f"raymask-deadletter\0{stream}\0{line}"
    return (base if where is None else f"{base}\0{where}").encode()


def seal(stream: str, key: Key, d: DeadLetter, where: str | None = None) -> dict:
    """One dead-letter entry: the record sealed under `key`, bound to stream, line and (for
    Kafka) `where` = "topic[partition]", whose `line` is then the source offset."""
    nonce = os.urandom(12)
    ct = _aead_key(key).encrypt(nonce, d.raw, _aad(stream, d.line, where))
    entry = {
        "stream": stream,
        "line": d.line,
        "reason": d.reason,
        "field": d.field,
        "key": key.id,
        "key_version": key.version,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ct).decode(),
    }
    if where is not None:
        entry["where"] = where
    return entry


def open_entry(e: dict, keyring: Keyring) -> bytes:
    """The record inside a dead-letter entry (KeyringError, ValueError, KeyError, InvalidTag)."""
    key = keyring.get(e["key"], int(e["key_version"]))
    return _aead_key(key).decrypt(
        base64.b64decode(e["nonce"]),
        base64.b64decode(e["ciphertext"]),
        _aad(e["stream"], int(e["line"]), e.get("where")),
    )


class DeadLetterWriter:
    """Appends encrypted dead letters to a file; counts them."""

    def __init__(
        self, path: str | Path, stream: str, key: Key, csv_header: bytes | None = None
    ) -> None:
        self.path = Path(path)
        self.csv_header = (
            csv_header.decode("utf-8", "replace").rstrip("\r\n") if csv_header else None
        )
        self.stream = stream
        self.key = key
        self._f: IO[str] | None = None
        self.count = 0

    def write(self, letters: Iterable[DeadLetter]) -> None:
        for d in letters:  # error path: one entry per bad record
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
            entry = seal(self.stream, self.key, d)
            if self.csv_header is not None:  # column names only, so a replay can parse the record
                entry["csv_header"] = self.csv_header
            self._f.write(json.dumps(entry) + "\n")
            self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


@dataclass(frozen=True)
class OpenedDeadLetter:
    stream: str
    line: int
    reason: str
    field: str | None
    raw: bytes
    csv_header: str | None = None


def read_dead_letters(path: str | Path, keyring: Keyring) -> Iterator[OpenedDeadLetter]:
    """Decrypt the entries of a dead-letter file (for a person holding the key)."""
    p = Path(path)
    try:
        f = open(p, encoding="utf-8")  # noqa: SIM115
    except OSError:
        raise InputError(f"{p}: cannot read dead-letter file") from None
    with f:
        for i, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                e = json.loads(text)
                raw = open_entry(e, keyring)
            except KeyringError:
                raise
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{p}:{i}: not a dead-letter entry") from None
            except InvalidTag:
                raise InputError(
                    f"{p}:{i}: entry does not decrypt (wrong key, or the entry was altered)"
                ) from None
            yield OpenedDeadLetter(
                e["stream"], int(e["line"]), e["reason"], e.get("field"), raw, e.get("csv_header")
            )
