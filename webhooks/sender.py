"""The one place that sends HTTP requests to developers' webhook endpoints.

httpcore (httpx's transport) with a network backend that resolves the endpoint's host itself,
checks every address it resolves to, and connects to an address it checked (so a name cannot
resolve to a public address for the check and a private one for the connection). Unless
WEBHOOKS_ALLOW_PRIVATE_URLS is on (development and tests, refused in production), an address that
is not globally routable — private, loopback, link-local (cloud metadata services), carrier-grade
NAT, multicast, reserved, or one of those inside an IPv6 wrapper — refuses the delivery before a
packet is sent. httpcore never follows redirects: a 3xx is a failed attempt like any non-2xx.

Every attempt opens a new connection (no pooling across attempts: each one is checked at send
time) and has one deadline, WEBHOOK_TIMEOUT_SECONDS, over connecting, sending and reading the
answer, so a receiver that trickles bytes cannot hold a worker thread longer than that.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
from django.conf import settings

EXCERPT_BYTES = 1000
USER_AGENT = "TimepointWebhooks/1 (+https://api.timepointai.com/api/docs)"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", ".localhost")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The endpoint's host is, or resolves to, an address webhooks may not reach."""


def address_is_public(address: IPAddress) -> bool:
    """Globally routable unicast, also when wrapped in IPv6 (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address_is_public(address.ipv4_mapped)
        if address.sixtofour is not None:
            return address_is_public(address.sixtofour)
        if address.teredo is not None:
            return address_is_public(address.teredo[1])
        if address in _NAT64:
            return address_is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook endpoint, or None. Only what can be known without DNS:
    the real address check happens at every send (`post`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "The URL is not valid."
    allowed = ("https",) if settings.WEBHOOKS_REQUIRE_HTTPS else ("https", "http")
    if parts.scheme not in allowed:
        return "The URL must start with https://."
    if not parts.hostname:
        return "The URL has no host."
    if parts.username is not None or parts.password is not None:
        return "The URL must not carry a user name or password; authenticate by the signature."
    if parts.fragment:
        return "The URL must not have a #fragment."
    if port == 0:
        return "The URL's port is not valid."
    if settings.WEBHOOKS_ALLOW_PRIVATE_URLS:
        return None
    host = parts.hostname.lower().rstrip(".")
    if host == _LOCAL_NAMES[0] or host.endswith(_LOCAL_NAMES[1]):
        return "The URL points at this machine; endpoints must be reachable on the internet."
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if not address_is_public(literal):
        return "The URL points at a private, loopback or link-local address."
    return None


def url_normalize(url: str) -> str:
    """The URL with an internationalised host in its ASCII (punycode) form, which is what DNS
    and the HTTP `Host` header carry."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if host.isascii():
        return parts.geturl()
    ascii_host = host.encode("idna").decode("ascii")
    netloc = ascii_host if parts.port is None else f"{ascii_host}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("The webhook attempt ran out of time.")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(
            ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _CheckedBackend(httpcore.SyncBackend):
    """Resolves the host, refuses it unless every address is allowed, connects to one of them."""

    def __init__(self, *, deadline: float, allow_private: bool) -> None:
        self._deadline = deadline
        self._allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}")
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        refused = [a for a in addresses if not address_is_public(a)]
        if refused and not self._allow_private:
            raise AddressRefused(f"{host} resolves to a non-public address ({refused[0]})")
        last: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("The webhook attempt ran out of time.")
            try:
                stream = super().connect_tcp(
                    str(address),
                    port,
                    timeout=left if timeout is None else min(timeout, left),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise last


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the status the receiver answered (2xx is success), or why there
    was none; a redirect has both (its status, and the note that it was not followed)."""

    status_code: int | None
    error: str
    excerpt: str
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(*, url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST `body` to `url` once. Never raises for anything the network or the receiver does."""
    started = time.monotonic()
    deadline = started + settings.WEBHOOK_TIMEOUT_SECONDS
    backend = _CheckedBackend(deadline=deadline, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE_URLS)
    timeouts = {
        "connect": min(settings.WEBHOOK_CONNECT_TIMEOUT_SECONDS, settings.WEBHOOK_TIMEOUT_SECONDS),
        "read": settings.WEBHOOK_TIMEOUT_SECONDS,
        "write": settings.WEBHOOK_TIMEOUT_SECONDS,
        "pool": settings.WEBHOOK_TIMEOUT_SECONDS,
    }
    sent = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **headers}
    status: int | None = None
    error = ""
    excerpt = b""
    try:
        with httpcore.ConnectionPool(
            network_backend=backend, retries=0, max_keepalive_connections=0
        ) as pool:
            with pool.stream(
                "POST",
                url,
                headers=list(sent.items()),
                content=body,
                extensions={"timeout": timeouts},
            ) as response:
                status = response.status
                for chunk in response.iter_stream():
                    excerpt += chunk
                    if len(excerpt) >= EXCERPT_BYTES:
                        break
    except AddressRefused as exc:
        error = f"refused: {exc}"
    except httpcore.TimeoutException:
        error = f"timed out after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    except httpcore.UnsupportedProtocol as exc:
        error = f"unsupported URL: {exc}"
    except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if status is not None and not error and 300 <= status < 400:
        error = "redirects are not followed"
    elif status is not None and error:
        # The status line came, then the body failed: the status is what the receiver decided.
        error = ""
    return Answer(
        status_code=status,
        error=error[:500],
        excerpt=excerpt[:EXCERPT_BYTES].decode("utf-8", errors="replace"),
        duration_ms=int((time.monotonic() - started) * 1000),
    )
