"""Access to the dashboard: open on loopback, a token everywhere else; only its own host names; strict headers.

With a token, every request must carry it: as ``Authorization: Bearer TOKEN``
(scripts, ``fesf predict``), or as the cookie that opening ``/?token=TOKEN`` once
sets (browsers). The cookie is HttpOnly and SameSite=Strict, and the token is
compared in constant time.

Every request must name the dashboard in its ``Host`` header (:class:`HostCheck`):
a web page whose DNS name an attacker re-points at 127.0.0.1 (DNS rebinding) would
otherwise reach a dashboard on loopback, which needs no token, as its own origin.
Every response carries a Content-Security-Policy and the headers that forbid framing,
MIME sniffing and referrers (:func:`secure_headers`).
"""

import hmac
import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Sequence

from flask import Flask, redirect, request
from werkzeug.wrappers import Response

COOKIE = "fesf_dashboard_token"
#: Shortest token accepted: 128 bits of ``secrets.token_urlsafe``.
MIN_TOKEN_LENGTH = 22


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses, which only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(host: str, token: str | None) -> str | None:
    """The reason the dashboard must not start on ``host`` with ``token``, or None when it may."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (
            f"the access token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if token is None and not is_loopback(host):
        return (
            f"--host {host} lets other machines reach the dashboard; set an access token in FESF_DASHBOARD_TOKEN "
            "(export FESF_DASHBOARD_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'))"
        )
    return None


def require_token(server: Flask, token: str) -> None:
    """Refuse every request to ``server`` that does not carry ``token``."""
    expected = token.encode()

    def matches(given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected)

    @server.before_request
    def guard() -> Response | tuple[str | dict[str, str], int] | None:
        header = request.headers.get("Authorization", "")
        if matches(header.removeprefix("Bearer ") if header.startswith("Bearer ") else None):
            return None
        if matches(request.cookies.get(COOKIE)):
            return None
        if matches(request.args.get("token")):
            # Trade the token in the address for a cookie, and drop it from the address bar.
            response = redirect(request.path)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
            return response
        if request.path.startswith("/api/"):
            return {"error": "this dashboard needs its access token: send Authorization: Bearer TOKEN"}, 401
        return "This dashboard needs its access token: open it with ?token=TOKEN once.", 401


#: Host names a loopback dashboard answers to besides its own address.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Addresses that mean "every interface of this machine".
_EVERY_INTERFACE = ("0.0.0.0", "::", "")
#: What a host name or address may hold; anything else in a Host header is refused before it is echoed.
_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9._:\-]+")


def normal_host(host: str) -> str:
    """``host`` as compared: lower case, without brackets around an IPv6 address or a trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def _host_of(header: str) -> str:
    """The host of a ``Host`` header value, without its port."""
    if header.startswith("["):  # [::1]:8050
        return normal_host(header.partition("]")[0] + "]")
    name, colon, port = header.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return normal_host(name)
    return normal_host(header)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_allowed_hosts(value: str) -> list[str]:
    """The names of ``--allowed-hosts NAME[,NAME...]``.

    Raises
    ------
    ValueError
        For an empty list or a name that is not a host name or address (a port or URL, say).
    """
    names = [normal_host(name) for name in value.split(",") if name.strip()]
    if not names:
        raise ValueError("--allowed-hosts: give one or more host names, separated by commas")
    for name in names:
        if not _HOST_CHARACTERS.fullmatch(name) or (":" in name and not _is_address(name)):
            raise ValueError(
                f"--allowed-hosts: {name!r} is not a host name or address; give names as browsers "
                "and scripts write them in the address, without scheme or port (dash.example.org)"
            )
    return names


class HostCheck:
    """Which ``Host`` headers name this dashboard.

    Parameters
    ----------
    bound : str
        The address the dashboard listens on (``--host``). On loopback it also answers to
        ``localhost``, 127.0.0.1 and ::1; on every interface (0.0.0.0, ::) to those, to this
        machine's names and to any IP address (a page cannot rebind an address, only a name).
    allowed : iterable of str
        More names it answers to (``--allowed-hosts``): those a proxy forwards or users type.
    """

    def __init__(self, bound: str, allowed: Iterable[str] = ()) -> None:
        self.names = {normal_host(bound), *(normal_host(name) for name in allowed)}
        self.any_address = normal_host(bound) in _EVERY_INTERFACE
        if self.any_address:
            self.names |= {normal_host(socket.gethostname()), normal_host(socket.getfqdn())}
        if is_loopback(normal_host(bound)) or self.any_address:
            self.names |= set(LOOPBACK_NAMES)
        self.names.discard("")

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header (None: without one, as HTTP/1.0 allows) is for us."""
        if header is None:
            return True  # browsers always send one: only they can be turned against the dashboard
        host = _host_of(header)
        return host in self.names or (self.any_address and _is_address(host))


def require_host(server: Flask, check: HostCheck) -> None:
    """Refuse, with 400, every request to ``server`` whose ``Host`` header ``check`` does not allow."""

    @server.before_request
    def guard() -> tuple[Response, int] | None:
        header = request.environ.get("HTTP_HOST")
        if check.allows(header):
            return None
        shown = _host_of(header or "")
        shown = shown[:100] if _HOST_CHARACTERS.fullmatch(shown) else "(not a host name)"
        message = (
            f"this dashboard does not answer to the host name {shown}; "
            f"if that is its name, start it with --allowed-hosts {shown}"
        )
        if request.path.startswith("/api/"):
            return Response(json.dumps({"error": message}) + "\n", mimetype="application/json"), 400
        return Response(message + "\n", mimetype="text/plain"), 400


def content_security_policy(script_hashes: Sequence[str]) -> str:
    """The dashboard's Content-Security-Policy, allowing the inline scripts whose hashes are given.

    Everything comes from the dashboard itself. Dash writes one inline script into every page
    (``var renderer = new DashRenderer();``): it is allowed by its hash (``Dash.csp_hashes``),
    not by ``'unsafe-inline'``. Styles need ``'unsafe-inline'``: Dash's components and Plotly set
    style attributes and insert style elements as they draw. Plotly draws images as ``data:``
    URLs.
    """
    directives = {
        "default-src": ["'none'"],
        "script-src": ["'self'", *script_hashes],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def secure_headers(server: Flask, script_hashes: Sequence[str]) -> None:
    """Give every response of ``server`` a strict Content-Security-Policy and no framing, sniffing or referrer."""
    headers = {
        "Content-Security-Policy": content_security_policy(script_hashes),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @server.after_request
    def add_headers(response: Response) -> Response:
        response.headers.update(headers)
        return response
