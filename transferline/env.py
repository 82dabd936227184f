"""The environment for the command-line tools the pipeline drives (dvc, prefect, bentoml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# No usage reporting from any of the tools, wherever they are started from.
QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "ITERATIVE_DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
}


def tool_env() -> dict[str, str]:
    """This process's environment, quiet, with this interpreter's bin directory first on PATH."""
    env = {**os.environ, **QUIET_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
