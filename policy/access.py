"""Who is calling, and which views they may see: API keys, JWTs, and the rule that maps roles to
stream views.

- API keys: `rmk_<id>_<secret>`, the secret 32 random bytes. The access file keeps, per key, its
  id, the caller's name, its roles and the SHA-256 of the secret (a random 256-bit secret needs
  no slow hash: nothing to guess), never the secret; `raymask access add|revoke|list` manages it.
  A key is checked in constant time.
- JWTs: verified with PyJWT against the configured public keys (or HMAC secrets): signature,
  `exp` required and checked, `iss` and `aud` when configured; `alg: none` and any algorithm not
  configured are refused. The roles come from a claim (`roles` by default, a list or a
  space-separated string).
- The rule: a role is a view name. A caller may read view V of stream S when V is one of its
  roles and S has that view; `default` (the strictest view) needs the role `default`. A caller
  who may see no view of a stream is told 403 whether or not the stream exists, so the answer
  never says which streams there are.

- mTLS identities, where the deployment terminates TLS in front of raymask (Envoy, Istio,
  nginx, a cloud load balancer: Serve's own proxy cannot ask clients for certificates). The
  terminator verifies the client certificate and forwards who it was in a header, which
  raymask reads only when told to (`MtlsHeader`): Envoy's `x-forwarded-client-cert` (the `URI`
  SAN, e.g. a SPIFFE id, else the `Subject`), or a plain subject-DN header with a verify header
  that must say SUCCESS (nginx's `$ssl_client_s_dn` / `$ssl_client_verify`). The identity must be
  listed in the access file (`raymask access add-identity`) with its roles. The terminator must
  set the header on every request and drop any copy a client sent; the Serve port must not be
  reachable except through it.

Plain logic: the Serve app calls `Authenticator.identify` and `allowed_view`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymask.errors import InputError

__all__ = [
    "Caller", "AccessFile", "JwtVerifier", "Authenticator", "allowed_view", "Denied",
    "MtlsHeader", "parse_xfcc",
]  # fmt: skip

_KEY = re.compile(r"rmk_([a-z0-9]{8})_([A-Za-z0-9_-]{43})\Z")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    via: str  # api-key | jwt | mtls


class Denied(Exception):
    """An access decision against the caller: `status` 401 (who are you?) or 403 (not for you);
    the message is safe to return."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class AccessFile:
    """The API keys, in a JSON file the operator manages (mode 0600). A running server reads it
    again when it changes, so `raymask access revoke` takes effect without a restart."""

    path: Path
    keys: list[dict[str, Any]] = field(default_factory=list)
    mtime: float = 0.0
    identities: list[dict[str, Any]] = field(default_factory=list)  # mTLS: identity, name, roles

    @classmethod
    def load(cls, path: str | Path) -> AccessFile:
        p = Path(path)
        if not p.exists():
            return cls(p)
        try:
            mtime = p.stat().st_mtime
            data = json.loads(p.read_text())
            keys = list(data["keys"])
            identities = list(data.get("identities", []))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{p}: not an access file (no list of keys)") from None
        return cls(p, keys, mtime, identities)

    def _fresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            if self.mtime:  # the file was read and is gone: nobody gets in
                self.keys = []
            return
        if mtime != self.mtime:
            again = AccessFile.load(self.path)
            self.keys, self.mtime, self.identities = again.keys, again.mtime, again.identities

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": self.keys, "identities": self.identities}, f, indent=2)
        os.replace(tmp, self.path)

    def add(self, name: str, roles: Sequence[str], *, now: float | None = None) -> str:
        """A new key for `name` with `roles`; returns the key itself (shown once, never stored)."""
        if not _NAME.match(name):
            raise InputError("a caller name is 1-64 letters, digits or _.@-")
        bad = [r for r in roles if not _NAME.match(r)]
        if not roles or bad:
            raise InputError("give one or more roles (view names)")
        kid = secrets.token_hex(4)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.keys.append({
            "id": kid, "name": name, "roles": sorted(set(roles)), "sha256": _digest(secret),
            "created": now if now is not None else time.time(), "revoked": False,
        })  # fmt: skip
        return f"rmk_{kid}_{secret}"

    def add_identity(self, identity: str, name: str, roles: Sequence[str]) -> None:
        """Let the client certificate `identity` (a SPIFFE/URI SAN, or a subject DN as the TLS
        terminator writes it) in as `name` with `roles`."""
        if not _NAME.match(name):
            raise InputError("a caller name is 1-64 letters, digits or _.@-")
        if not roles or any(not _NAME.match(r) for r in roles):
            raise InputError("give one or more roles (view names)")
        if not identity or len(identity) > 512 or any(ord(c) < 32 for c in identity):
            raise InputError("an identity is a certificate's URI SAN or subject DN, one line")
        self.identities = [i for i in self.identities if i["identity"] != identity]
        self.identities.append({"identity": identity, "name": name, "roles": sorted(set(roles))})

    def remove_identity(self, identity: str) -> None:
        before = len(self.identities)
        self.identities = [i for i in self.identities if i["identity"] != identity]
        if len(self.identities) == before:
            raise InputError(f"no identity {identity} in {self.path}")

    def check_identity(self, candidates: Sequence[str]) -> Caller | None:
        """The caller of the first listed identity among `candidates` (most specific first)."""
        self._fresh()
        known = {i["identity"]: i for i in self.identities}
        for c in candidates:
            if c in known:
                return Caller(known[c]["name"], frozenset(known[c]["roles"]), "mtls")
        return None

    def revoke(self, kid: str) -> None:
        for k in self.keys:
            if k["id"] == kid:
                k["revoked"] = True
                return
        raise InputError(f"no key {kid} in {self.path}")

    def check(self, key: str) -> Caller | None:
        m = _KEY.match(key)
        if not m:
            return None
        self._fresh()
        kid, secret = m.groups()
        want = _digest(secret)
        found = None
        for k in self.keys:  # compare every entry's digest: no early exit on the id
            ok = hmac.compare_digest(k["sha256"], want) and k["id"] == kid
            if ok and not k.get("revoked"):
                found = k
        if found is None:
            return None
        return Caller(found["name"], frozenset(found["roles"]), "api-key")


@dataclass
class JwtVerifier:
    """JWT checks: `keys` are PEM public keys (RS*/ES*/EdDSA) or HMAC secrets (HS*), tried in
    order; `algorithms` the ones accepted (never `none`)."""

    keys: Sequence[Any]
    algorithms: Sequence[str] = ("RS256", "ES256", "EdDSA")
    issuer: str | None = None
    audience: str | None = None
    roles_claim: str = "roles"
    leeway_s: float = 30.0

    def __post_init__(self) -> None:
        if any(a.lower() == "none" for a in self.algorithms):
            raise InputError("JWT algorithm 'none' cannot be accepted")
        if not self.keys:
            raise InputError("JWT checks need at least one key")

    def check(self, token: str) -> Caller | None:
        import jwt

        for key in self.keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=list(self.algorithms), audience=self.audience,
                    issuer=self.issuer, leeway=self.leeway_s,
                    options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
                )  # fmt: skip
            except jwt.PyJWTError:  # bad tokens, and keys that do not fit the algorithm
                continue
            roles = claims.get(self.roles_claim, [])
            if isinstance(roles, str):
                roles = roles.split()
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                return None
            return Caller(str(claims["sub"])[:64], frozenset(roles), "jwt")
        return None


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Envoy's x-forwarded-client-cert: elements split by ',' and pairs by ';' outside double
    quotes, values unquoted (backslash escapes). Keys lower-cased."""
    elements, pairs, cur, quoted, i = [], {}, [], False, 0
    key = None
    while i <= len(value):
        ch = value[i] if i < len(value) else ","
        if quoted:
            if ch == "\\" and i + 1 < len(value):
                cur.append(value[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == "=" and key is None:
            key, cur = "".join(cur).strip().lower(), []
        elif ch in ";,":
            if key is not None:
                pairs[key] = "".join(cur).strip()
            key, cur = None, []
            if ch == ",":
                if pairs:
                    elements.append(pairs)
                pairs = {}
        else:
            cur.append(ch)
        i += 1
    if quoted:
        raise ValueError("unterminated quote")
    return elements


@dataclass(frozen=True)
class MtlsHeader:
    """Where the TLS terminator says which client certificate it verified: `format` "xfcc"
    (Envoy/Istio, header x-forwarded-client-cert) or "dn" (a subject-DN header, plus `verify`
    that must read SUCCESS, as nginx writes them)."""

    header: str = "x-forwarded-client-cert"
    format: str = "xfcc"
    verify: str = "x-ssl-client-verify"

    def __post_init__(self) -> None:
        if self.format not in ("xfcc", "dn"):
            raise InputError("the mTLS header format is xfcc or dn")

    def candidates(self, headers: Mapping[str, str]) -> list[str] | None:
        """The identities the header names (most specific first), None when it is absent;
        Denied(401) when it is there but cannot be trusted."""
        raw = headers.get(self.header.lower())
        if raw is None:
            return None
        if self.format == "dn":
            if headers.get(self.verify.lower(), "").strip().upper() != "SUCCESS":
                raise Denied(401, "the client certificate was not verified")
            dn = raw.strip()
            cn = re.search(r"(?:^|[,/])\s*CN=([^,/]+)", dn)
            return [dn] + ([f"CN={cn.group(1).strip()}"] if cn else [])
        try:
            elements = parse_xfcc(raw)
        except ValueError:
            raise Denied(401, "unreadable client-certificate header") from None
        if len(elements) != 1:  # several hops: whose certificate is meant is not clear
            raise Denied(401, "the client-certificate header must name exactly one certificate")
        e = elements[0]
        out = [e[k] for k in ("uri",) if e.get(k)]
        if e.get("subject"):
            out.append(e["subject"])
            cn = re.search(r"(?:^|,)\s*CN=([^,]+)", e["subject"])
            if cn:
                out.append(f"CN={cn.group(1).strip()}")
        if not out:
            raise Denied(401, "the client-certificate header names no URI or subject")
        return out


@dataclass
class Authenticator:
    access: AccessFile | None = None
    jwt: JwtVerifier | None = None
    mtls: MtlsHeader | None = None  # identities come from the access file

    @property
    def on(self) -> bool:
        return self.access is not None or self.jwt is not None

    def identify(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request (headers with lower-case names), or Denied(401)."""
        auth = headers.get("authorization", "")
        scheme, _, cred = auth.partition(" ")
        api_key = headers.get("x-api-key") or (cred if scheme.lower() == "apikey" else "")
        caller = None
        if api_key and self.access is not None:
            caller = self.access.check(api_key.strip())
        elif scheme.lower() == "bearer" and cred and self.jwt is not None:
            caller = self.jwt.check(cred.strip())
        elif self.mtls is not None and self.access is not None:
            names = self.mtls.candidates(headers)
            caller = self.access.check_identity(names) if names else None
        if caller is None:
            raise Denied(401, "unknown caller: send a valid API key or bearer token")
        return caller


def allowed_view(caller: Caller, stream: str, views: Sequence[str] | None, view: str | None) -> str:
    """The view `caller` reads of `stream` (`views`: the stream's view names, None if there is no
    such stream), or Denied(403) without saying whether the stream exists."""
    want = view or "default"
    names = set(views or ()) | {"default"} if views is not None else set()
    if want not in names or want not in caller.roles:
        raise Denied(403, f"not allowed: stream {stream}, view {want}")
    return want
