"""SSL and SASL_SSL client options given as text (`--kafka-option`): the files become the TLS
context aiokafka needs, in the process that makes the client; errors name options, not paths."""

from __future__ import annotations

import datetime as dt
import pickle
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raymask.actors.sinks.kafka import KafkaSink
from raymask.actors.sources.kafka import KafkaSource, with_ssl_context
from raymask.errors import InputError


@pytest.fixture()
def pki(tmp_path):
    """A CA certificate, and a client certificate it signed with the client's key (PEM files)."""
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key, issuer: str, signer, ca: bool) -> x509.Certificate:  # noqa: ANN001
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    ca_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    files = {
        "ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem", "key": tmp_path / "client.key",
    }  # fmt: skip
    pem = serialization.Encoding.PEM
    files["ca"].write_bytes(
        cert("raymask test CA", ca_key, "raymask test CA", ca_key, True).public_bytes(pem)
    )
    files["cert"].write_bytes(
        cert("client", client_key, "raymask test CA", ca_key, False).public_bytes(pem)
    )
    files["key"].write_bytes(client_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key password"),
    ))  # fmt: skip
    return files


def test_plaintext_options_pass_unchanged():
    opts = {"sasl_mechanism": "PLAIN", "request_timeout_ms": 5000}
    assert with_ssl_context(opts) == opts


def test_sasl_ssl_without_files_verifies_with_the_system_cas():
    out = with_ssl_context({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"})
    ctx = out["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert out["sasl_mechanism"] == "SCRAM-SHA-512"


def test_ssl_files_become_a_context_with_that_ca_and_client_certificate(pki):
    out = with_ssl_context({
        "security_protocol": "SSL", "ssl_cafile": str(pki["ca"]), "ssl_certfile": str(pki["cert"]),
        "ssl_keyfile": str(pki["key"]), "ssl_password": "key password",
    })  # fmt: skip
    assert not any(k.startswith("ssl_") and k != "ssl_context" for k in out)
    ctx = out["ssl_context"]
    subjects = [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]
    assert {"commonName": "raymask test CA"} in subjects
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_wrong_key_password_or_a_missing_file_is_an_input_error_without_the_path(pki, tmp_path):
    base = {
        "security_protocol": "SSL",
        "ssl_certfile": str(pki["cert"]),
        "ssl_keyfile": str(pki["key"]),
    }
    with pytest.raises(InputError, match="cannot build the TLS context") as info:
        with_ssl_context({**base, "ssl_password": "not it"})
    assert "not it" not in str(info.value)
    missing = tmp_path / "secret-name" / "ca.pem"
    with pytest.raises(InputError, match="ssl_cafile") as info:
        with_ssl_context({"security_protocol": "SSL", "ssl_cafile": str(missing)})
    assert "secret-name" not in str(info.value)


def test_ssl_files_without_an_ssl_protocol_are_refused(pki):
    with pytest.raises(InputError, match="need security_protocol SSL or SASL_SSL"):
        with_ssl_context({"ssl_cafile": str(pki["ca"])})


def test_sources_and_sinks_keep_the_text_so_they_travel_to_actors(pki):
    opts = {"security_protocol": "SSL", "ssl_cafile": str(pki["ca"])}
    src = KafkaSource("127.0.0.1:9", ["t"], "g", client_options=opts)
    sink = KafkaSink("127.0.0.1:9", client_options=opts)
    assert src.options["ssl_cafile"] == sink.client_options["ssl_cafile"] == str(pki["ca"])
    pickle.dumps((src.options, sink.client_options))  # an SSLContext would not pickle
    assert isinstance(sink._client_opts()["ssl_context"], ssl.SSLContext)  # noqa: SLF001
