"""Access to the dashboard: open on loopback, a token everywhere else.

With a token, every request must carry it: as ``Authorization: Bearer TOKEN``
(scripts, ``fesf predict``), or as the cookie that opening ``/?token=TOKEN`` once
sets (browsers). The cookie is HttpOnly and SameSite=Strict, and the token is
compared in constant time.
"""

import hmac
import ipaddress

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
