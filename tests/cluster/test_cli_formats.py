"""`raymask generate --format xml|protobuf`, `policy validate` on the formats' options, and
`raymask run` on XML and Protobuf files on a real local Ray."""

from __future__ import annotations

import pytest
from lxml import etree
from typer.testing import CliRunner

from raymask.cluster.cli import app
from raymask.errors import InputError
from raymask.loadtest.traffic import PROTO_MESSAGES, TRAFFIC_PROTO, generate_bytes
from raymask.policy.keys import generate_key_file


@pytest.fixture()
def keyfile(tmp_path):
    return generate_key_file(tmp_path / "keys.json", ["tok", "deadletter"])


@pytest.mark.parametrize("fmt", ["xml", "protobuf"])
def test_generate_writes_the_format(tmp_path, fmt):
    out = tmp_path / f"t.{fmt}"
    r = CliRunner().invoke(
        app, ["generate", "-p", "iot", "-n", "50", "--format", fmt, "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == generate_bytes("iot", 50, 0, fmt)


def test_generate_refuses_an_unknown_format(tmp_path):
    r = CliRunner().invoke(app, ["generate", "-p", "iot", "--format", "yaml"])
    assert isinstance(r.exception, InputError)  # main() prints it as one line, exit 2
    assert "formats: ndjson, csv, xml, protobuf" in str(r.exception)


BAD = [
    ("format: xml\n    key: a", "format xml needs its xml: options"),
    ("format: ndjson\n    xml: {record: a/b}\n    key: a", "xml: options are for format xml only"),
    ("format: xml\n    xml: {record: p:a/b}\n    key: a", "prefix p is not under namespaces"),
    ("format: xml\n    xml: {record: a/b}\n    key: a/@b/c", "may end in @attribute"),
    (
        "format: protobuf\n    protobuf: {message: a.B}\n    key: a",
        "exactly one of descriptor_set and proto",
    ),
]


@pytest.mark.parametrize(("head", "msg"), BAD, ids=[b[1] for b in BAD])
def test_policy_validate_locates_format_option_problems(tmp_path, head, msg):
    p = tmp_path / "p.yaml"
    p.write_text(f"version: 1\nstreams:\n  s:\n    {head}\n    fields:\n      x: redact\n")
    r = CliRunner().invoke(app, ["policy", "validate", str(p)])
    assert r.exit_code == 2 and msg in r.output and "p.yaml:" in r.output, r.output


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["xml", "protobuf"])
def test_run_masks_xml_and_protobuf_files_on_ray(ray_session, tmp_path, keyfile, fmt):
    if fmt == "xml":
        opts, key, email = "xml: {record: Telemetry/Reading}", '"@deviceId"', "owner/email"
    else:
        opts = f'protobuf: {{proto: "{TRAFFIC_PROTO}", message: {PROTO_MESSAGES["iot"]}}}'
        key, email = "device.id", "owner.email"
    pol = tmp_path / "p.yaml"
    pol.write_text(f"""version: 1
streams:
  t:
    format: {fmt}
    {opts}
    key: {key}
    fields:
      {key}: {{technique: tokenize, key: tok}}
      {email}: {{technique: mask, preset: email}}
""")
    src, dst = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    src.write_bytes(generate_bytes("iot", 3000, seed=4, fmt=fmt))
    r = CliRunner().invoke(app, ["run", "-P", str(pol), "-s", "t", "-i", str(src), "-o", str(dst),
                                 "--keys", str(keyfile), "--workers", "2"], catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "in = out + dead" in r.output and "yes" in r.output
    if fmt == "xml":
        a, b = etree.fromstring(src.read_bytes()), etree.fromstring(dst.read_bytes())
        assert len(b.findall("Reading")) == 3000
        for x, y in zip(a.findall("Reading"), b.findall("Reading"), strict=True):
            assert y.get("deviceId") != x.get("deviceId")
            assert y.findtext("message") == x.findtext("message")
    else:
        from raymask.kernels.codecs import protobuf as pb

        cls = pb.message_class(pb.compile_proto(TRAFFIC_PROTO), PROTO_MESSAGES["iot"])
        import numpy as np
        import pyarrow as pa

        def msgs(b: bytes) -> list:
            s, e, _ = pb.split(np.frombuffer(b, np.uint8), 1)
            return [
                cls.FromString(m)
                for m in pb.unframe(pa.array([b[x:y] for x, y in zip(s, e, strict=True)]))
            ]

        a, b = msgs(src.read_bytes()), msgs(dst.read_bytes())
        assert len(b) == 3000
        for x, y in zip(a, b, strict=True):
            assert y.device.id != x.device.id and y.message == x.message and y.gps == x.gps
