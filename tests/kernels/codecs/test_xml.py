"""The XML codec against lxml as the oracle: records found at their path (namespaces, groups),
field text and attributes read as lxml reads them (references, CDATA, line ends), masked values
escaped so lxml reads them back exactly, every other byte kept, malformed records by reason,
DOCTYPEs refused; and a fuzzer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from raymask.kernels.codecs import xml as X
from raymask.kernels.codecs.spans import K_MISSING, K_NULL, K_OBJECT, K_STRING
from raymask.loadtest.traffic import generate_bytes

PAIN_NS = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
PAIN = f"""<?xml version="1.0" encoding="UTF-8"?>
<p:Document xmlns:p="{PAIN_NS}" xmlns:x="urn:other">
 <p:CstmrCdtTrfInitn>
  <p:GrpHdr><p:MsgId>M1</p:MsgId></p:GrpHdr>
  <p:PmtInf><p:PmtInfId>A</p:PmtInfId>
   <p:CdtTrfTxInf><p:Amt><p:InstdAmt Ccy="EUR">1.00</p:InstdAmt></p:Amt>
    <p:Cdtr><p:Nm>Anna &amp; Bob &#x263A; &#233;</p:Nm></p:Cdtr>
    <p:CdtrAcct><p:Id><p:IBAN>DE89370400440532013000</p:IBAN></p:Id></p:CdtrAcct></p:CdtTrfTxInf>
   <!-- a comment between records -->
   <p:CdtTrfTxInf><p:Amt><p:InstdAmt Ccy='USD'>2</p:InstdAmt></p:Amt>
    <p:Cdtr><p:Nm><![CDATA[Carl <&> ]]>Jr</p:Nm></p:Cdtr>
    <p:CdtrAcct><p:Id><p:IBAN>FR14 2004</p:IBAN></p:Id></p:CdtrAcct></p:CdtTrfTxInf>
  </p:PmtInf>
  <p:PmtInf><p:PmtInfId>B</p:PmtInfId>
   <p:CdtTrfTxInf><p:Cdtr><p:Nm/></p:Cdtr><p:CdtrAcct><p:Id><p:IBAN>GB29&#10;X</p:IBAN></p:Id></p:CdtrAcct></p:CdtTrfTxInf>
   <p:CdtTrfTxInf><p:Cdtr><p:Nm>line1\r\nline2</p:Nm></p:Cdtr></p:CdtTrfTxInf>
  </p:PmtInf>
 </p:CstmrCdtTrfInitn>
</p:Document>
""".encode()
RECORD = "p:Document/p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf"
FIELDS = ("Cdtr/Nm", "CdtrAcct/Id/IBAN", "Amt/InstdAmt/@Ccy", "Amt/InstdAmt")


def _split(doc: bytes, record: str = RECORD, fields=FIELDS):
    lay = X.build_layout(record, fields)
    whole = np.frombuffer(doc, np.uint8)
    cut = X.find_prolog(whole, lay)
    body = whole[cut:]
    s, e, lines = X.split(body, 1 + doc[:cut].count(b"\n"), lay)
    return doc[:cut], body, lay, X.scan(body, s, e, lay), lines


def test_records_and_fields_are_read_as_lxml_reads_them():
    prolog, body, lay, sc, lines = _split(PAIN)
    assert (sc.err == 0).all() and len(sc.starts) == 4
    assert list(lines) == [6, 10, 15, 16]
    cols = [c.to_pylist() for c in X.extract_columns(body, sc, lay, [0, 1, 2, 3])]
    ns = {"p": PAIN_NS}
    recs = etree.fromstring(PAIN).findall(".//p:CdtTrfTxInf", ns)
    want_nm = [r.findtext("p:Cdtr/p:Nm", namespaces=ns) for r in recs]
    assert cols[0] == [want_nm[0], want_nm[1], None, want_nm[3]]  # <Nm/> is null
    assert sc.vkind[2, 0] == K_NULL
    assert cols[1] == [r.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=ns) for r in recs]
    amt = [r.find("p:Amt/p:InstdAmt", ns) for r in recs]
    assert cols[2] == [a.get("Ccy") if a is not None else None for a in amt]
    assert cols[3] == [a.text if a is not None else None for a in amt]
    # the framing: prolog + records (each to the next record) is the document, byte for byte
    assert (
        prolog + b"".join(body[s:e].tobytes() for s, e in zip(sc.starts, sc.ends, strict=True))
        == PAIN
    )


def test_masked_values_are_escaped_so_lxml_reads_them_back_exactly():
    prolog, body, lay, sc, _ = _split(PAIN)
    n = len(sc.starts)
    tricky = ["<&>\"'\t\r\n]]>", "ü€😀", "", "a  b"]
    reps = [X.escape(pa.array(tricky)), X.escape(pa.array(["XX"] * n))]
    edit = np.stack([sc.vkind[:, 2] == K_STRING, sc.vkind[:, 1] == K_STRING], axis=1)
    out = X.emit(body, sc, np.ones(n, bool), [2, 1], edit, reps)
    doc = prolog + b"".join(out.to_pylist())
    ns = {"p": PAIN_NS}
    recs = etree.fromstring(doc).findall(".//p:CdtTrfTxInf", ns)
    assert [r.find("p:Amt/p:InstdAmt", ns).get("Ccy") for r in recs[:2]] == tricky[:2]
    assert [r.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=ns) for r in recs] == [
        "XX",
        "XX",
        "XX",
        None,
    ]
    # everything else is byte-identical: only the edited spans differ
    no_edit = X.emit(body, sc, np.ones(n, bool), [2, 1], np.zeros_like(edit), reps)
    assert prolog + b"".join(no_edit.to_pylist()) == PAIN


def test_generated_documents_match_lxml_on_every_field():
    doc = generate_bytes("payments", 300, seed=3, fmt="xml")
    fields = ("account/id", "customer/name", "customer/email", "customer/phone", "note", "amount")
    _, body, lay, sc, _ = _split(doc, "Payments/Payment", fields)
    assert (sc.err == 0).all()
    cols = X.extract_columns(body, sc, lay, list(range(len(fields))))
    recs = etree.fromstring(doc).findall("Payment")
    for f, col in zip(fields, cols, strict=True):
        assert col.to_pylist() == [
            r.findtext(f) or (None if r.find(f).text is None else "") for r in recs
        ]


MALFORMED = [
    # (what, replacement inside the second record, error code)
    ("mismatched end tag", (b"</p:Nm>", b"</p:Nx>"), X.E_TAG),
    ("undefined entity", (b"Jr", b"&lol;"), X.E_ENTITY),
    ("bad character reference", (b"Jr", b"&#0;"), X.E_ENTITY),
    ("raw < in text", (b"Jr", b"J<r"), X.E_SYNTAX),
    ("attribute without quotes", (b"Ccy='USD'", b"Ccy=USD"), X.E_SYNTAX),
    ("< in an attribute", (b"Ccy='USD'", b"Ccy='U<D'"), X.E_SYNTAX),
    ("an attribute twice", (b"Ccy='USD'", b"Ccy='USD' Ccy='EUR'"), X.E_SYNTAX),
    ("]]> in text", (b"Jr", b"J]]>r"), X.E_SYNTAX),
    ("DOCTYPE inside", (b"<p:Amt>", b"<!DOCTYPE x><p:Amt>"), X.E_DTD),
    ("invalid UTF-8", (b"Jr", b"J\xff"), X.E_UTF8),
    ("control character", (b"Jr", b"J\x01"), X.E_UTF8),
    ("invalid UTF-8 in a tag name", (b"<p:Cdtr>", b"<p:Cdtr><a\xff/>"), X.E_SYNTAX),
    ("invalid UTF-8 in a comment", (b"<p:Cdtr>", b"<p:Cdtr><!-- \xff -->"), X.E_UTF8),
    ("-- inside a comment", (b"<p:Cdtr>", b"<p:Cdtr><!-- a -- b -->"), X.E_SYNTAX),
    ("not CDATA", (b"Jr", b"<![CDATX[x]]>"), X.E_DTD),
]


@pytest.mark.parametrize(("what", "edit", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_record_gets_its_reason_and_the_others_are_read(what, edit, code):
    a, b = edit
    i = PAIN.index(b"<p:CdtTrfTxInf><p:Amt><p:InstdAmt Ccy='USD'>")
    doc = PAIN[:i] + PAIN[i:].replace(a, b, 1)
    _, body, lay, sc, _ = _split(doc)
    assert len(sc.starts) == 4
    assert sc.err[1] == code and list(np.flatnonzero(sc.err)) == [1], what
    assert (sc.vkind[1] == K_MISSING).all()


def test_an_unclosed_last_record_is_a_dead_letter_not_passed_through():
    doc = PAIN[: PAIN.index(b"line1")]  # cut inside the last record
    _, body, lay, sc, _ = _split(doc)
    assert list(sc.err) == [0, 0, 0, X.E_UNCLOSED]


def test_child_elements_make_a_field_an_object_and_comments_too():
    doc = b"<r><e><a><b>1</b></a><c>x<!-- y -->z</c></e></r>"
    _, body, lay, sc, _ = _split(doc, "r/e", ("a", "c"))
    assert list(sc.vkind[0]) == [K_OBJECT, K_OBJECT]


@pytest.mark.parametrize(
    "prolog",
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>',
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>',
        b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><r>',
    ],
    ids=["billion laughs", "external entity", "external DTD"],
)
def test_doctype_is_refused(prolog):
    with pytest.raises(X.XmlError, match="DOCTYPE refused"):
        X.check_prolog(prolog, {}, "r/e")


def test_record_path_namespace_must_be_declared():
    X.check_prolog(PAIN[:200], {"p": PAIN_NS}, RECORD)
    with pytest.raises(X.XmlError, match="does not declare the namespace of prefix p"):
        X.check_prolog(PAIN[:200], {"p": "urn:wrong"}, RECORD)


def test_boundary_cuts_before_the_last_record():
    prolog, body, lay, sc, _ = _split(PAIN)
    assert X.boundary(body, lay) == sc.starts[-1]
    assert X.boundary(body[: sc.starts[1]], lay) == -1  # one record so far: wait for more


@st.composite
def _documents(draw):
    doc = bytearray(generate_bytes("iot", draw(st.integers(0, 5)), draw(st.integers(0, 99)), "xml"))
    for _ in range(draw(st.integers(0, 4))):
        if len(doc) > 60:
            i = draw(st.integers(40, len(doc) - 1))
            op = draw(st.integers(0, 2))
            if op == 0:
                doc[i] = draw(st.sampled_from(b"<>&/\"'=!?[]-;#x\xff\x00 a"))
            elif op == 1:
                del doc[i : i + draw(st.integers(1, 20))]
            else:
                doc[i:i] = draw(st.binary(max_size=8))
    return bytes(doc)


FUZZ_FIELDS = ("@deviceId", "owner/email", "net/ipv4", "device/mac")


# no deadline (the first example pays Numba's compile); a hang is caught by pytest-timeout
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_fuzz_no_crash_no_loss_and_accepted_records_are_well_formed(doc):
    lay = X.build_layout("Telemetry/Reading", FUZZ_FIELDS)
    whole = np.frombuffer(doc, np.uint8)
    cut = X.find_prolog(whole, lay)
    if cut < 0:
        return
    body = whole[cut:]
    X.boundary(body, lay)
    s, e, _ = X.split(body, 1, lay)
    if len(s):  # the records tile the body: nothing is lost between them
        assert s[0] == 0 and (s[1:] == e[:-1]).all() and e[-1] == len(body)
    sc = X.scan(body, s, e, lay)
    cols = X.extract_columns(body, sc, lay, [0, 1, 2, 3])
    assert all(len(c) == len(s) for c in cols)
    ok = sc.err == 0
    edit = sc.vkind[:, [0, 1]] == K_STRING
    reps = [X.escape(pa.array(["T&<"] * len(s))), X.escape(pa.array(["m@x"] * len(s)))]
    out = X.emit(body, sc, ok, [0, 1], edit, reps)
    assert len(out) == len(s)
    for i in np.flatnonzero(ok):  # what we accept as a record element, lxml parses
        rec = out[int(i)].as_py()
        end = X._element_end(np.frombuffer(rec, np.uint8), 0, len(rec))
        el = etree.fromstring(rec[:end])
        if edit[i, 0]:
            assert el.get("deviceId") == "T&<"


def test_prefixed_field_steps_match_by_local_name():
    _, body, lay, sc, _ = _split(PAIN, RECORD, ("p:Cdtr/p:Nm", "p:Amt/p:InstdAmt/@Ccy"))
    cols = X.extract_columns(body, sc, lay, [0, 1])
    assert cols[1].to_pylist() == ["EUR", "USD", None, None]
    assert cols[0].to_pylist()[0] == "Anna & Bob \u263a \u00e9"


def test_replay_document_wraps_dead_records_in_their_namespaced_ancestors():
    _, body, lay, sc, _ = _split(PAIN)
    raws = [body[s:e].tobytes() for s, e in zip(sc.starts, sc.ends, strict=True)]
    doc = X.replay_document(raws, RECORD, {"p": PAIN_NS})
    recs = etree.fromstring(doc).findall(".//p:CdtTrfTxInf", {"p": PAIN_NS})
    assert len(recs) == 4
    _, body2, lay2, sc2, _ = _split(doc)
    assert len(sc2.starts) == 4 and (sc2.err == 0).all()


def test_a_field_that_occurs_again_gets_a_span_per_occurrence_in_extra_columns():
    doc = (b"<r><e id='1'><a>x</a><a/><t k='p'/><t k='q'><a>no</a></t><a>y<b/></a></e>"
           b"<e id='2'><a>z</a></e><e id='3'><t k='s'/></e></r>")  # fmt: skip
    _, body, lay, sc, _ = _split(doc, "r/e", ("a", "t/@k", "@id"))
    assert (sc.err == 0).all()
    # columns: the fields, then the second occurrences (a, t/@k), then the third (a)
    assert sc.extra == {0: [3, 5], 1: [4]} and list(sc.leaf_of) == [0, 1, 2, 0, 1, 0]
    assert list(sc.vkind[0]) == [K_STRING, K_STRING, K_STRING, K_NULL, K_STRING, K_OBJECT]
    assert list(sc.vkind[1]) == [K_STRING, K_MISSING, K_STRING, K_MISSING, K_MISSING, K_MISSING]
    cols = X.extract_columns(body, sc, lay, [0, 1, 3, 4, 5])
    assert [c.to_pylist() for c in cols] == [
        ["x", "z", None], ["p", None, "s"], [None, None, None], ["q", None, None],
        [None, None, None]]  # fmt: skip
    # t/a is not the field a; without `repeated`, a second occurrence is an error
    nested = X.scan(body, sc.starts, sc.ends, lay, repeated=False)
    assert list(nested.err) == [X.E_DUP, 0, 0]
