"""Optional bearer-token check in front of every endpoint except the health probes.

Off unless $TRANSFERLINE_API_TOKEN is set. Probes stay open so an orchestrator can check the service
without the secret; everything else (predictions, metadata, metrics, docs) needs
`Authorization: Bearer <token>`. The admin endpoints (/admin/...) also answer loopback clients only
(`admin_refusal`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "TRANSFERLINE_API_TOKEN"
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


class BearerTokenAuth:
    """ASGI middleware: 401 with a JSON message unless the request carries the configured token."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        error = "missing bearer token" if not given else "invalid bearer token"
        response = JSONResponse(
            {"error": error, "detail": f"send the header 'Authorization: Bearer <token>' (the service's {TOKEN_ENV})"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def admin_refusal(request: Request) -> JSONResponse | None:
    """None when `request` may use an admin endpoint (model swap, status), else the 403 to answer.

    Admin endpoints answer loopback clients only, whatever address the service listens on: in a container
    published on all interfaces, or behind `serve.host: 0.0.0.0`, swapping the model stays a local action
    (run it inside the host or container). The bearer token, when set, is checked before this, as for every
    endpoint.
    """
    host = request.client.host if request.client else ""
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if local:
        return None
    return JSONResponse(
        {"error": "admin endpoints answer loopback clients only", "detail": f"request came from {host or 'unknown'}"},
        status_code=403,
    )
