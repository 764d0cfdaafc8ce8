"""Access: API keys (stored hashed, revocable, reloaded), JWT edge cases (expired, wrong audience,
wrong issuer, wrong key, alg none, algorithm confusion), and the access matrix of roles x streams
x views, where a stream the caller may not see looks exactly like one that does not exist."""

from __future__ import annotations

import json
import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from raymask.errors import InputError
from raymask.policy.access import (
    AccessFile,
    Authenticator,
    Caller,
    Denied,
    JwtVerifier,
    MtlsHeader,
    allowed_view,
    parse_xfcc,
)

PRIV = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUB_PEM = (
    PRIV.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _confused() -> str:
    """An HS256 token whose HMAC secret is the RSA public key's PEM (the classic algorithm
    confusion: PyJWT will not even make one, so it is built by hand)."""
    import base64
    import hashlib
    import hmac

    def b64(b: bytes) -> bytes:
        return base64.urlsafe_b64encode(b).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "x", "roles": ["ops"], "exp": int(time.time()) + 60,
                           "iss": "idp", "aud": "raymask"}).encode())  # fmt: skip
    sig = b64(hmac.new(PUB_PEM.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def _token(key=PRIV, alg="RS256", **claims):  # noqa: ANN001, ANN003
    base = {"sub": "svc-1", "roles": ["ops"], "exp": int(time.time()) + 300, "iss": "idp",
            "aud": "raymask"}  # fmt: skip
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=alg)


def test_api_keys_are_stored_hashed_checked_and_revoked_live(tmp_path):
    f = AccessFile.load(tmp_path / "access.json")
    key = f.add("alice", ["ops", "support"])
    f.save()
    text = (tmp_path / "access.json").read_text()
    assert key.split("_", 2)[2] not in text and "alice" in text
    assert stat.S_IMODE(os.stat(tmp_path / "access.json").st_mode) == 0o600
    server = AccessFile.load(tmp_path / "access.json")  # what a running server holds
    assert server.check(key) == Caller("alice", frozenset({"ops", "support"}), "api-key")
    assert server.check(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert server.check("rmk_nothing") is None
    kid = key.split("_")[1]
    f.revoke(kid)
    time.sleep(0.01)
    f.save()
    os.utime(tmp_path / "access.json", (time.time() + 5, time.time() + 5))
    assert server.check(key) is None  # the server read the file again
    with pytest.raises(InputError):
        f.revoke("nope")


@pytest.mark.parametrize(
    ("make", "ok"),
    [
        (lambda: _token(), True),
        (lambda: _token(roles="ops support"), True),  # a space-separated claim
        (lambda: _token(exp=int(time.time()) - 120), False),  # expired beyond the leeway
        (lambda: _token(exp=None), False),  # no expiry at all
        (lambda: _token(aud="someone-else"), False),
        (lambda: _token(iss="evil"), False),
        (lambda: _token(key=OTHER), False),  # signed by another key
        (lambda: jwt.encode({"sub": "x", "roles": ["ops"], "exp": int(time.time()) + 60,
                             "iss": "idp", "aud": "raymask"}, None, algorithm="none"), False),
        (_confused, False),  # the public key as an HMAC secret
        (lambda: "not.a.token", False),
    ],
    ids=["ok", "roles-string", "expired", "no-exp", "audience", "issuer", "wrong-key",
         "alg-none", "alg-confusion", "garbage"],
)  # fmt: skip
def test_jwt_edge_cases(make, ok):
    # tokens are made when the test runs: made at collection, a valid one could expire before
    v = JwtVerifier(keys=[PUB_PEM], algorithms=("RS256",), issuer="idp", audience="raymask")
    got = v.check(make())
    assert (got is not None) == ok
    if ok:
        assert got.name == "svc-1" and "ops" in got.roles and got.via == "jwt"


def test_alg_none_cannot_be_configured():
    with pytest.raises(InputError):
        JwtVerifier(keys=[PUB_PEM], algorithms=("none",))


STREAMS = {"payments": ["default", "ops", "support"], "logs": ["default", "sre"]}
CALLERS = {
    "ops": Caller("o", frozenset({"ops"}), "api-key"),
    "sre+default": Caller("s", frozenset({"sre", "default"}), "jwt"),
    "nobody": Caller("n", frozenset(), "api-key"),
}


@pytest.mark.parametrize("who", sorted(CALLERS))
@pytest.mark.parametrize("stream", ["payments", "logs", "secret-stream"])
@pytest.mark.parametrize("view", [None, "default", "ops", "support", "sre"])
def test_access_matrix(who, stream, view):
    caller = CALLERS[who]
    views = STREAMS.get(stream)
    want = view or "default"
    allowed = views is not None and want in views and want in caller.roles
    if allowed:
        assert allowed_view(caller, stream, views, view) == want
    else:
        with pytest.raises(Denied) as info:
            allowed_view(caller, stream, views, view)
        # the same status and wording whether or not the stream exists
        assert (
            info.value.status == 403
            and str(info.value) == f"not allowed: stream {stream}, view {want}"
        )


def test_identify_reads_api_keys_and_bearer_tokens(tmp_path):
    f = AccessFile.load(tmp_path / "a.json")
    key = f.add("alice", ["ops"])
    auth = Authenticator(f, JwtVerifier(keys=[PUB_PEM], algorithms=("RS256",), issuer="idp",
                                        audience="raymask"))  # fmt: skip
    assert auth.identify({"x-api-key": key}).name == "alice"
    assert auth.identify({"authorization": f"ApiKey {key}"}).name == "alice"
    assert auth.identify({"authorization": f"Bearer {_token()}"}).name == "svc-1"
    for headers in (
        {},
        {"authorization": "Bearer x.y.z"},
        {"x-api-key": "rmk_00000000_" + "A" * 43},
    ):
        with pytest.raises(Denied) as info:
            auth.identify(headers)
        assert info.value.status == 401


XFCC = ('By=spiffe://acme/ns/raymask;Hash=9ba61d6425303443;'
        'Subject="CN=svc-a,OU=pay,O=Acme \\"Widgets\\", Inc.";URI=spiffe://acme/ns/pay/sa/svc-a')  # fmt: skip


def test_xfcc_is_parsed_with_quotes_escapes_and_hops():
    [e] = parse_xfcc(XFCC)
    assert e["subject"] == 'CN=svc-a,OU=pay,O=Acme "Widgets", Inc.'
    assert e["uri"] == "spiffe://acme/ns/pay/sa/svc-a" and e["hash"] == "9ba61d6425303443"
    assert len(parse_xfcc("By=a;URI=x,By=b;URI=y")) == 2
    with pytest.raises(ValueError):
        parse_xfcc('Subject="CN=open')


def test_mtls_identities_from_a_terminators_header(tmp_path):
    """The URI SAN first, then the subject, then its CN; listed identities only; a header that
    names several certificates, none, or an unverified one is a 401; a revoked identity stops
    working on the running server's next request."""
    f = AccessFile.load(tmp_path / "a.json")
    f.add_identity("spiffe://acme/ns/pay/sa/svc-a", "svc-a", ["ops"])
    f.add_identity("CN=edge-7", "edge-7", ["support"])
    f.save()
    auth = Authenticator(AccessFile.load(tmp_path / "a.json"), None, MtlsHeader())
    who = auth.identify({"x-forwarded-client-cert": XFCC})
    assert (who.name, who.roles, who.via) == ("svc-a", frozenset({"ops"}), "mtls")
    edge = 'Hash=1;Subject="CN=edge-7,O=Acme"'
    assert auth.identify({"x-forwarded-client-cert": edge}).name == "edge-7"
    for bad in ('Hash=1;Subject="CN=stranger"', "By=a;URI=x,By=b;URI=y", "Hash=1",
                'Subject="CN=open'):  # fmt: skip
        with pytest.raises(Denied) as info:
            auth.identify({"x-forwarded-client-cert": bad})
        assert info.value.status == 401
    with pytest.raises(Denied):
        auth.identify({})  # no header, no key: unknown
    # an API key still works beside it
    key = f.add("alice", ["ops"])
    f.save()
    assert auth.identify({"x-api-key": key, "x-forwarded-client-cert": edge}).name == "alice"
    f.remove_identity("CN=edge-7")
    f.save()
    os.utime(tmp_path / "a.json", (time.time() + 5, time.time() + 5))
    with pytest.raises(Denied):
        auth.identify({"x-forwarded-client-cert": edge})


def test_mtls_dn_headers_need_the_terminators_verify_success(tmp_path):
    f = AccessFile.load(tmp_path / "a.json")
    f.add_identity("CN=svc-b", "svc-b", ["sre"])
    auth = Authenticator(f, None, MtlsHeader("x-ssl-client-s-dn", "dn", "x-ssl-client-verify"))
    ok = {"x-ssl-client-s-dn": "CN=svc-b,O=Acme", "x-ssl-client-verify": "SUCCESS"}
    assert auth.identify(ok).roles == frozenset({"sre"})
    for verify in ("FAILED:unable to verify", "NONE", None):
        h = {"x-ssl-client-s-dn": "CN=svc-b,O=Acme"}
        if verify:
            h["x-ssl-client-verify"] = verify
        with pytest.raises(Denied) as info:
            auth.identify(h)
        assert info.value.status == 401
    with pytest.raises(InputError):
        MtlsHeader(format="pem")
    with pytest.raises(InputError):
        f.add_identity("CN=x\nCN=y", "x", ["ops"])
