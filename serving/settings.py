"""The service's settings: the `serve` section of params.yaml, overridable per key by environment variables.

Environment variables let one params.yaml serve different deployments (a container, a benchmark run
with batching off) without editing it: TRANSFERLINE_SERVE_<KEY>, e.g. TRANSFERLINE_SERVE_BATCHING=false.

This is the only reader of those settings: the service, the deploy step and `flows.service_control` all
call `load_serve_params`, so the process that starts the service and the service itself agree on its
address whatever the environment says.
"""

from __future__ import annotations

import os
from pathlib import Path

from transferline.config import ServeParams, parse_section, read_params_file
from transferline.errors import ParamsError

PARAMS_ENV = "TRANSFERLINE_PARAMS"
OVERRIDE_PREFIX = "TRANSFERLINE_SERVE_"


def load_serve_params(
    params_file: str | Path | None = None, environ: dict[str, str] | None = None, root: Path | None = None
) -> ServeParams:
    """`serve` from params.yaml (defaults when the file or section is absent), then the env overrides.

    `root` is the directory the service runs in (default: the current one): a relative
    $TRANSFERLINE_PARAMS or the default params.yaml is found there, as `bentoml serve` started there would.
    """
    environ = dict(os.environ) if environ is None else environ
    path = Path(params_file or environ.get(PARAMS_ENV) or "params.yaml")
    if root is not None and not path.is_absolute():
        path = root / path
    section = dict(read_params_file(path).get("serve") or {}) if path.is_file() else {}
    for key in ServeParams.model_fields:
        value = environ.get(OVERRIDE_PREFIX + key.upper())
        if value is not None:
            section[key] = value
    unknown = sorted(
        name
        for name in environ
        if name.startswith(OVERRIDE_PREFIX) and name[len(OVERRIDE_PREFIX) :].lower() not in ServeParams.model_fields
    )
    if unknown:
        raise ParamsError(f"unknown serve setting(s) in the environment: {', '.join(unknown)}")
    return parse_section({"serve": section}, "serve", ServeParams)
