"""Reveal: the clear values behind `fpe` and `encrypt` outputs, for a caller holding the key.

Tokens (`tokenize`) are one-way by design: nothing can reveal them. Masks and redactions drop
information and cannot be reversed either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from raymask.errors import InputError, PolicyError
from raymask.kernels import fpe as fpe_kernel
from raymask.kernels import siv as siv_kernel
from raymask.policy.compile import compile_stream
from raymask.policy.keys import Keyring
from raymask.policy.loader import load_policy
from raymask.policy.schema import Encrypt, Fpe, Policy, Segregate

__all__ = ["reveal_values", "reveal_vault", "RevealResult"]


class RevealResult:
    """Clear values (None where a value could not be revealed) and a reason per failure."""

    def __init__(self, values: list[str | None], errors: list[str | None]) -> None:
        self.values = values
        self.errors = errors


def reveal_values(
    policy: str | Path | Policy,
    stream: str,
    field: str,
    values: Sequence[str | None] | pa.Array,
    *,
    keyring: Keyring | None = None,
    role: str | None = None,
    tweak: str | Sequence[str] | None = None,
    key_version: int | None = None,
    vault: str | Path | None = None,
) -> RevealResult:
    """Decrypt `values` of `field` as the role's view of `stream` wrote them.

    `tweak` is needed when the field's fpe uses `tweak_field`: the tweak field's input value,
    one for all values or one per value. `key_version` picks an older fpe key (FPE output has no
    room for a version); encrypt outputs carry their version and find their key themselves.
    """
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    plan = compile_stream(pol, stream)
    ring = keyring if keyring is not None else Keyring.from_env()
    op = next((o for o in plan.view(role).ops if o.path == field), None)
    if op is None:
        raise PolicyError([f"stream {stream} has no field {field}"])
    arr = values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())
    spec = op.spec
    if isinstance(spec, Fpe):
        key = ring.get(ring.resolve(spec.key).id, key_version)
        if spec.tweak_field is not None:
            if tweak is None:
                raise InputError(
                    f"field {field} is encrypted with the value of {spec.tweak_field} as tweak; pass it"
                )
            tw: bytes | pa.Array = pa.array(
                [tweak] * len(arr) if isinstance(tweak, str) else list(tweak), pa.string()
            )
        else:
            tw = (spec.tweak or "").encode()
        out, err = fpe_kernel.fpe_decrypt(
            arr,
            key.material,
            radix=spec.radix,
            mode=spec.algorithm,
            tweak=tw,
            keep_last=spec.keep_last,
            luhn=spec.luhn,
        )
        msgs = fpe_kernel.ERRORS
    elif isinstance(spec, Segregate):
        if vault is None:
            raise InputError(f"field {field} is segregated: give the vault folder (--vault)")
        return reveal_vault(vault, arr, field, ring, spec.key)
    elif isinstance(spec, Encrypt):
        kid = ring.resolve(spec.key).id
        keys = {v: ring.get(kid, v).material for v in ring.versions(kid)}
        ad = field.encode() if spec.bind_field else None
        out, err = siv_kernel.decrypt_column(arr, keys, prefix=spec.prefix, ad=ad)
        msgs = siv_kernel.ERRORS
    else:
        raise PolicyError(
            [
                f"field {field} uses {op.technique}, which cannot be reversed (only fpe and encrypt can)"
            ]
        )
    errors = [
        None if e == 0 else msgs.get(int(e), "cannot reveal") for e in np.asarray(err).tolist()
    ]
    return RevealResult(out.to_pylist(), errors)


def reveal_vault(
    vault: str | Path, refs: pa.Array, field: str, ring: Keyring, key_id: str
) -> RevealResult:
    """The values behind `vault:` references of a segregated field: the vault's rows for those
    references (Parquet parts, read with a filter), opened with the key (any version) and checked
    to be bound to their own reference."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from raymask.policy.registry import VAULT_SEP

    want = pc.unique(refs.drop_null()) if refs.null_count else pc.unique(refs)
    wanted = (ds.field("field") == field) & ds.field("ref").isin(want)
    if str(vault).startswith("kafka://"):
        table = ds.dataset(kafka_vault(str(vault))).to_table(
            columns=["ref", "field", "sealed"], filter=wanted
        )
    else:
        folder = Path(vault)
        if not folder.is_dir():
            raise InputError(f"{folder}: no vault here")
        table = ds.dataset(folder, format="parquet").to_table(
            columns=["ref", "field", "sealed"], filter=wanted
        )
    kid = ring.resolve(key_id).id
    keys = {v: ring.get(kid, v).material for v in ring.versions(kid)}
    if table.num_rows:  # a retried batch may have written a row twice: any copy opens
        idx = pc.index_in(want, table.column("ref")).to_numpy(zero_copy_only=False)
        table = table.take(pa.array(idx[~np.isnan(idx.astype(float))].astype(np.int64)))
    opened, err = siv_kernel.decrypt_column(table.column("sealed"), keys, ad=field.encode())
    found: dict[str, str] = {}
    for ref, text, e in zip(table.column("ref").to_pylist(), opened.to_pylist(), err.tolist(),
                            strict=True):  # fmt: skip
        if e == 0 and text is not None:
            head, sep, value = text.partition(VAULT_SEP)
            if sep and head == ref:  # bound to its own reference
                found[ref] = value
    values, errors = [], []
    for r in refs.to_pylist():
        v = found.get(r) if r is not None else None
        values.append(v)
        errors.append(None if v is not None else "no such reference in the vault")
    return RevealResult(values, errors)


def kafka_vault(url: str, idle_s: float = 2.0) -> pa.Table:
    """The vault a Kafka run wrote (kafka://BOOTSTRAP/TOPIC, e.g. kafka://127.0.0.1:9092/in.vault):
    every message of the topic, each an Arrow IPC stream of vault rows, read from the start
    until nothing came for `idle_s`."""
    from raymask.actors.sources.kafka import read_all

    rest = url[len("kafka://") :]
    bootstrap, _, topic = rest.partition("/")
    if not bootstrap or not topic:
        raise InputError(f"{url}: give the vault as kafka://BOOTSTRAP/TOPIC")
    values = [m.value for m in read_all(bootstrap, topic, idle_s=idle_s) if m.value]
    tables = [pa.ipc.open_stream(v).read_all() for v in values]
    if not tables:
        return pa.table({"ref": pa.array([], pa.string()), "field": pa.array([], pa.string()),
                         "sealed": pa.array([], pa.binary())})  # fmt: skip
    return pa.concat_tables(tables)
