"""Keyring: keys from files and the environment, versions, and no material in any text."""

from __future__ import annotations

import base64
import json

import pytest

from raymask.errors import KeyringError
from raymask.policy.keys import Key, Keyring, generate_key_file

MAT = b"0123456789abcdef0123456789abcdef"


def test_highest_version_is_current_and_older_versions_stay(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({"keys": [
        {"id": "tok", "version": 1, "material": "base64:" + base64.b64encode(MAT).decode()},
        {"id": "tok", "version": 2, "material": "hex:" + (b"x" * 32).hex()},
    ]}))  # fmt: skip
    ring = Keyring.from_file(p)
    assert ring.get("tok").version == 2
    assert ring.get("tok", 1).material == MAT


def test_env_variables_and_key_file(tmp_path, monkeypatch):
    p = generate_key_file(tmp_path / "k.json", ["deadletter"])
    env = {"RAYMASK_KEYRING": str(p), "RAYMASK_KEY_TOK": "base64:" + base64.b64encode(MAT).decode(),
           "RAYMASK_KEY_TOK_V2": "hex:" + MAT.hex()}  # fmt: skip
    ring = Keyring.from_env(env)
    assert ring.ids() == ["deadletter", "tok"]
    assert ring.get("tok").version == 2
    assert (p.stat().st_mode & 0o777) == 0o600


def test_missing_key_names_the_id_and_how_to_provide_it():
    with pytest.raises(KeyringError, match="key 'tok' is not in the keyring .*RAYMASK_KEY_TOK"):
        Keyring().get("tok")


@pytest.mark.parametrize(
    ("material", "message"),
    [
        ("plain-text-key-material", "must be written as base64"),
        ("base64:" + base64.b64encode(b"short").decode(), "shorter than 16 bytes"),
    ],
)
def test_malformed_material_is_refused_without_echoing_it(tmp_path, material, message):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({"keys": [{"id": "tok", "material": material}]}))
    with pytest.raises(KeyringError, match=message) as info:
        Keyring.from_file(p)
    assert material not in str(info.value)


def test_repr_never_shows_material():
    ring = Keyring([Key("tok", 1, MAT)])
    assert MAT.decode() not in repr(ring.get("tok"))
    assert MAT.decode() not in repr(ring)
