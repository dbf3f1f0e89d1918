"""The ASGI middleware in front of everything `coa serve` answers: who may ask, and how much.

In order: the Host a request names (one valid host[:port]; on a loopback server, loopback
names only, so that a web page whose name was rebound to 127.0.0.1 reaches nothing), the
Origin of a browser's request (this page's own, or none: another site's page cannot post runs
with the user's browser), the API key on /v1 paths (the page, its files and /health are
public), and the body: read here whole, within the size limit and a time limit between its
pieces, before any route sees it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from coa.errors import ConfigError
from coa.serve.errors import ApiError

# One host name (labels of letters, digits, "-" and "_"), IPv4 address or bracketed IPv6 address,
# and an optional port: a list ("a, b"), user info, a path or spaces are no Host.
HOST = re.compile(r"(?P<name>(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")
BODY_TIMEOUT = 30.0  # seconds a request body may go without a byte before it is given up on


def check_keys(keys: list[str] | tuple[str, ...]) -> None:
    """Refuse an empty or blank key: compared with what a client without a key sends, it admits anyone."""
    if any(not key.strip() for key in keys):
        raise ConfigError("an API key is empty or blank: it would admit anyone who sends no key")


def host_name(value: str) -> str | None:
    """The host a Host header names, lower case and without brackets; None if it is not one valid host[:port]."""
    match = HOST.fullmatch(value)
    if match is None or (match["port"] and int(match["port"]) > 65535):
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
        return match["ipv6"].lower()
    return match["name"].lower()


class Guard:
    """The middleware; `hosts`: the host names requests may name (None: any), `body_timeout`: the
    longest wait for the next piece of a request body."""

    def __init__(self, app: Any, keys: list[str], max_bytes: int, hosts: list[str] | None,
                 body_timeout: float = BODY_TIMEOUT) -> None:
        check_keys(keys)
        self.app = app
        # Keys are kept as digests: every comparison is then of equal lengths, and runs and files
        # belong to a digest, so a key is never stored.
        self.digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        self.max_bytes = max_bytes
        self.hosts = {host.lower().strip("[]") for host in hosts} if hosts is not None else None
        self.body_timeout = body_timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"]]
        headers = dict(raw)
        try:
            owner = self.admit(scope["path"], headers, sum(1 for name, _ in raw if name == "host"))
        except ApiError as refused:
            return await refused.response()(scope, receive, send)
        scope.setdefault("state", {})["owner"] = owner
        too_large = ApiError(413, f"the request body is over the server's limit of {self.max_bytes:,} bytes "
                                  "(--max-request-bytes)", code="request_too_large", headers={"Connection": "close"})
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        body, more = bytearray(), True
        while more:  # read the body here, up to the limit, so a route never reads past it
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:  # a client that stopped sending holds a connection and a task for nothing
                stalled = ApiError(408, f"the request body stalled: nothing came for {self.body_timeout:g} s",
                                   code="request_timeout", headers={"Connection": "close"})
                return await stalled.response()(scope, receive, send)
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_large.response()(scope, receive, send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def admit(self, path: str, headers: dict[str, str], hosts_given: int = 1) -> str:
        """The request's owner (a digest of its key; "" where the API is open), or the refusal."""
        named = headers.get("host", "")
        host = host_name(named) if hosts_given == 1 else None
        if host is None:
            problem = (f"the request has {hosts_given} Host headers, not one" if hosts_given != 1 else
                       f"the Host header {named[:100]!r} is not one host name (with a port or without)")
            raise ApiError(403, problem, "permission_error", code="host_not_allowed")
        if self.hosts is not None and host not in self.hosts:
            raise ApiError(403, f"this server does not answer for the host {host!r} (--allowed-host)",
                           "permission_error", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != named.lower():
            raise ApiError(403, "requests from another site's pages are refused", "permission_error",
                           code="cross_origin")
        if not self.digests or not path.startswith("/v1"):
            return ""
        scheme, _, given = headers.get("authorization", "").encode("latin-1").partition(b" ")
        given = given.strip()
        digest = hashlib.sha256(given).digest()
        # Compared with every key, each in constant time: how long it takes tells nothing of which
        # key (if any) matched.
        matches = [hmac.compare_digest(digest, key) for key in self.digests]
        if scheme.lower() != b"bearer" or not given or not any(matches):
            raise ApiError(401, "a valid API key is needed: send it as `Authorization: Bearer KEY`",
                           "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return digest.hex()[:16]  # runs and files belong to a key, which is never stored
