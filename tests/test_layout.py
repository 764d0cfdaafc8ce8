"""The package layout and public surface are part of the interface: pinned here."""

from __future__ import annotations

import subprocess
import sys

import raymask


def test_public_api_is_pinned():
    assert sorted(raymask.__all__) == sorted([
        "InputError", "Key", "Keyring", "KeyringError", "PipelineError", "Policy", "PolicyError",
        "RaymaskError", "RunSummary", "generate_bytes", "load_policy", "mask_file", "parse_policy",
        "replay_dead_letters", "RevealResult", "reveal_values",
    ])  # fmt: skip


def test_pure_core_never_imports_ray():
    code = (
        "import sys; import raymask.kernels.tokenize, raymask.kernels.mask, raymask.kernels.hashing, "
        "raymask.kernels.rng, raymask.kernels.noise, raymask.kernels.rr, raymask.kernels.ledger, "
        "raymask.kernels.continual, raymask.actors.ledger, raymask.actors.accountant, "
        "raymask.kernels.codecs.formats, raymask.policy, raymask.policy.registry, raymask.actors.worker; "
        "assert 'ray' not in sys.modules, 'the pure core imported ray'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generic_folder_names_install_under_the_raymask_namespace():
    from importlib.metadata import distribution

    dist = distribution("raymask")
    text = (dist.read_text("top_level.txt") or "") + str(dist.files)
    for generic in ("kernels", "actors", "cluster", "policy", "loadtest"):
        assert f"\n{generic}\n" not in f"\n{text}\n"
    import raymask.kernels

    assert raymask.kernels.__name__ == "raymask.kernels"
