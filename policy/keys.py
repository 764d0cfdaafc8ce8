"""The keyring: keys by id and version, from a key file or the environment, never from a policy.

Key file (JSON or YAML), kept outside the repository and out of policies::

    {"keys": [{"id": "tok", "version": 1, "material": "base64:..."},
              {"id": "tok", "version": 2, "material": "base64:..."}]}

Environment: ``RAYMASK_KEYRING=/path/to/keys.json``, and/or one variable per key,
``RAYMASK_KEY_<ID>=base64:...`` (version 1) or ``RAYMASK_KEY_<ID>_V<N>=base64:...``
(the id is matched case-insensitively, ``-`` and ``.`` written as ``_``).

New output uses a key's highest version; earlier versions stay in the ring, so tokens and
ciphertexts made under them can still be matched and read after a rotation. A key's material
never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raymask.errors import KeyringError

__all__ = ["Key", "Keyring", "generate_key_file", "add_key_version"]

_ENV_KEY = re.compile(r"^RAYMASK_KEY_(?P<id>[A-Z0-9_]+?)(?:_V(?P<ver>\d+))?$")


@dataclass(frozen=True)
class Key:
    id: str
    version: int
    material: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, version={self.version}, material=<{len(self.material)} bytes>)"


def _decode_material(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        if text.startswith("base64:"):
            raw = base64.b64decode(text[7:], validate=True)
        elif text.startswith("hex:"):
            raw = bytes.fromhex(text[4:])
        else:
            raise ValueError
    except ValueError:
        raise KeyringError(
            f"{where}: key material must be written as base64:... or hex:..."
        ) from None
    if len(raw) < 16:
        raise KeyringError(f"{where}: key is shorter than 16 bytes")
    return raw


class Keyring:
    """Keys by id, each with one or more versions."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._keys: dict[str, dict[int, Key]] = {}
        for k in keys:
            self.add(k)

    def add(self, key: Key) -> None:
        self._keys.setdefault(key.id, {})[key.version] = key

    def __contains__(self, key_id: str) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"Keyring({', '.join(f'{i}@{sorted(v)}' for i, v in sorted(self._keys.items()))})"

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def versions(self, key_id: str) -> list[int]:
        """Versions of `key_id`, oldest first (empty when the id is unknown)."""
        return sorted(self._keys.get(key_id, {}))

    def get(self, key_id: str, version: int | None = None) -> Key:
        """The key `key_id` at `version` (default: its highest); KeyringError names the id."""
        versions = self._keys.get(key_id)
        if not versions:
            raise KeyringError(
                f"key '{key_id}' is not in the keyring (set RAYMASK_KEYRING to a key file that has it, "
                f"or RAYMASK_KEY_{key_id.upper().replace('-', '_').replace('.', '_')})"
            )
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise KeyringError(f"key '{key_id}' has no version {version}")
        return versions[version]

    def require(self, key_ids: Iterable[str]) -> None:
        """Raise KeyringError for the first id in `key_ids` that is missing."""
        for k in sorted(set(key_ids)):
            self.get(k)

    @classmethod
    def from_file(cls, path: str | Path) -> Keyring:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError:
            raise KeyringError(f"{p}: cannot read key file") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            raise KeyringError(f"{p}: key file is not valid JSON or YAML") from None
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            raise KeyringError(f"{p}: key file must hold a list under 'keys'")
        ring = cls()
        for i, entry in enumerate(doc["keys"]):
            where = f"{p}: keys[{i}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
                raise KeyringError(f"{where}: needs an id")
            ver = entry.get("version", 1)
            if not isinstance(ver, int) or ver < 1:
                raise KeyringError(f"{where} ({entry['id']}): version must be an integer >= 1")
            mat = entry.get("material")
            if not isinstance(mat, str):
                raise KeyringError(f"{where} ({entry['id']}): needs material")
            ring.add(Key(entry["id"], ver, _decode_material(mat, f"{where} ({entry['id']})")))
        return ring

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """Keys from RAYMASK_KEYRING (a key file) and RAYMASK_KEY_<ID>[_V<N>] variables."""
        env = os.environ if environ is None else environ
        ring = cls.from_file(env["RAYMASK_KEYRING"]) if env.get("RAYMASK_KEYRING") else cls()
        for name, value in env.items():
            m = _ENV_KEY.match(name)
            if not m or name == "RAYMASK_KEYRING":
                continue
            kid = m.group("id").lower()
            ring.add(Key(kid, int(m.group("ver") or 1), _decode_material(value, name)))
        return ring

    def resolve(self, key_id: str) -> Key:
        """Like get(), but also accepts ids written with '_' where the ring has '-' or '.'."""
        if key_id in self._keys:
            return self.get(key_id)
        alt = key_id.lower().replace("-", "_").replace(".", "_")
        if alt in self._keys:
            return self.get(alt)
        return self.get(key_id)


def generate_key_file(path: str | Path, key_ids: Iterable[str]) -> Path:
    """Write a new key file with one random 32-byte key per id (mode 0600)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "keys": [
            {
                "id": k,
                "version": 1,
                "material": "base64:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            }
            for k in sorted(set(key_ids))
        ]
    }
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    return p


def add_key_version(
    path: str | Path, key_id: str, *, nbytes: int = 32, new_id: bool = False
) -> Key:
    """Append a new random version of `key_id` to a key file (version 1 when `new_id`).

    Earlier versions stay, so outputs made under them can still be matched and decrypted.
    The file is rewritten atomically with mode 0600.
    """
    import re as _re

    if not _re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", key_id):
        raise KeyringError(
            f"'{key_id}' is not a valid key id (letters, digits, _ . -; starts with a letter)"
        )
    if nbytes not in (16, 24, 32, 48, 64):
        raise KeyringError("key size must be 16, 24, 32, 48 or 64 bytes")
    p = Path(path)
    doc: dict = {"keys": []}
    if p.exists():
        Keyring.from_file(p)  # validates the file before we touch it
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    versions = [int(k.get("version", 1)) for k in doc["keys"] if k.get("id") == key_id]
    if new_id and versions:
        raise KeyringError(f"key '{key_id}' already exists in {p}; use rotate to add a version")
    if not new_id and not versions:
        raise KeyringError(f"key '{key_id}' is not in {p}; use new to create it")
    version = max(versions, default=0) + 1
    material = secrets.token_bytes(nbytes)
    doc["keys"].append(
        {
            "id": key_id,
            "version": version,
            "material": "base64:" + base64.b64encode(material).decode(),
        }
    )
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return Key(key_id, version, material)
