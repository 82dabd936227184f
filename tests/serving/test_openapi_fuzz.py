"""Schemathesis against the live service's own OpenAPI document: whatever it generates, no 5xx.

Run through its command line (`st run`): the coverage phase (boundary and schema-violating values for
every field), then random fuzzing, with valid and invalid data, seeded. Only `not_a_server_error` is
checked: the document is BentoML's, generated from the input models, and describes the multipart form
only (not the JSON body, nor the 413/415/422 answers), so conformance checks would report the document's
omissions rather than faults of the service.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 200
SEED = 20240611


def test_schemathesis_finds_no_server_error(corpus_server, tmp_path: Path):
    spec = httpx.get(f"{corpus_server.url}/docs.json", timeout=30)
    assert spec.status_code == 200
    assert {"/classify", "/classify_batch", "/metadata"} <= set(spec.json()["paths"])
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{corpus_server.url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated, report[-3000:]
    assert int(generated.group(1)) >= EXAMPLES_PER_OPERATION and generated.group(1) == generated.group(2), report[
        -3000:
    ]
    assert corpus_server.process.poll() is None
    assert httpx.get(f"{corpus_server.url}/readyz", timeout=30).status_code == 200
    log = corpus_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, corpus_server.log_tail(60)
