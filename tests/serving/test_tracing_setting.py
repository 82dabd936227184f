"""BentoML traces every request unless told otherwise; the service turns its spans off unless serve.tracing
asks for them (with no exporter configured they go nowhere and cost ~13% of throughput, bench/results/load.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from opentelemetry.util.http import ExcludeList

from tests.serving.conftest import PROJECT_ROOT, ServingModels, server_env

READ_TRACING_CONFIG = """
import json
import serving.service
print(json.dumps(serving.service.Classifier.config.get("tracing")))
"""


def tracing_config(serving_models: ServingModels, setting: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", READ_TRACING_CONFIG],
        cwd=PROJECT_ROOT,
        env={**os.environ, **server_env(serving_models.home, tracing=setting)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_tracing_no_request_gets_a_span(serving_models: ServingModels):
    excluded = ExcludeList(tracing_config(serving_models, "false")["excluded_urls"])
    urls = ["http://127.0.0.1:3000/classify", "http://127.0.0.1:3000/classify_batch", "http://[::1]:3000/metadata"]
    assert all(excluded.url_disabled(url) for url in urls)  # what BentoML's OpenTelemetry middleware asks first


def test_tracing_on_leaves_bentoml_s_tracing_configuration_alone(serving_models: ServingModels):
    assert tracing_config(serving_models, "true") == {}
