"""Asking a running service to swap its model (POST /admin/swap) and what it serves (GET /admin/status).

Used by the registry's promote and rollback (the service follows the champion without a restart), the
flow's deploy step (flows/service_control.py), the tests and the swap benchmark. The token of
$TRANSFERLINE_API_TOKEN is sent when set, as the service requires it then.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from serving.auth import TOKEN_ENV
from serving.settings import load_serve_params
from transferline.errors import TransferlineError

SWAP_TIMEOUT_S = 90.0  # the service bounds a swap at ~50 s (serving/swap.py); a little more for the HTTP round trip


class SwapError(TransferlineError):
    """The service did not swap: it refused (the model cannot be served, another swap runs) or did not answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def auth_headers() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def local_service_url(project: Path = Path(".")) -> str:
    """The address the serve settings give (params.yaml of `project` and TRANSFERLINE_SERVE_*), reached over
    loopback when the service listens on every interface (admin endpoints answer loopback clients only)."""
    settings = load_serve_params(root=project.resolve())
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _refusal(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text[:300])
    except ValueError:
        return response.text[:300]


def service_status(url: str, timeout_s: float = 10.0) -> dict:
    """GET /admin/status; SwapError when the service answers otherwise, httpx.HTTPError when nothing answers."""
    response = httpx.get(f"{url}/admin/status", headers=auth_headers(), timeout=timeout_s)
    if response.status_code != 200:
        status = response.status_code
        raise SwapError(f"{url}/admin/status answered {status}: {_refusal(response)}", status)
    return response.json()


def request_swap(url: str, tag: str, timeout_s: float = SWAP_TIMEOUT_S) -> dict:
    """POST /admin/swap {"tag": tag}: the service's report once every worker serves `tag`; SwapError with the
    service's reason otherwise (the service then still serves its previous model)."""
    try:
        response = httpx.post(f"{url}/admin/swap", json={"tag": tag}, headers=auth_headers(), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise SwapError(f"swap of the service at {url} to {tag} got no answer: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise SwapError(
            f"the service at {url} refused to swap to {tag} ({response.status_code}): {_refusal(response)}",
            response.status_code,
        )
    return response.json()


def describe_swap(url: str, result: dict) -> str:
    workers = len(result.get("workers", []))
    if result.get("unchanged"):
        return f"the service at {url} already serves {result['model_tag']} ({workers} worker(s))"
    return (
        f"the service at {url} swapped from {result['previous']} to {result['model_tag']} in {workers} worker(s) "
        f"(load {result.get('load_s', 0):.2f} s, all workers ready {result['prepare_s']:.2f} s, "
        f"switch {result['switch_s']:.2f} s)"
    )


def follow_champion(tag: str, url: str, model_store: Path) -> str:
    """Swap the service at `url` to the new champion `tag`, if one runs there on the same model store.

    Returns what happened, in words. A service of another model store (another checkout's, a test's) is left
    alone, as is an address where nothing answers (it serves the champion when it starts)."""
    try:
        status = service_status(url)
    except httpx.HTTPError:
        return f"no service answers at {url}; it will serve {tag} when started"
    except SwapError as exc:
        if exc.status == 404:
            return f"the service at {url} has no /admin/swap (older code): restart it to serve {tag}"
        raise
    if Path(status["model_store"]).resolve() != model_store.resolve():
        return f"the service at {url} serves another model store ({status['model_store']}): not swapped"
    return describe_swap(url, request_swap(url, tag))
