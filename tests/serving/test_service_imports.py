"""The service runs without the training stack: importing it and starting a worker loads neither torch nor
scikit-learn (bentofile.yaml leaves both out of the image, and a worker that loaded them would carry
hundreds of MiB for nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.serving.conftest import PROJECT_ROOT, ServingModels, server_env

# What `bentoml serve serving.service:Classifier` does in each worker before the first request: import the
# module, then construct the service (model loaded into ONNX Runtime, metrics, warm-up inference).
START_A_WORKER = """
import json, sys
import serving.service
worker = serving.service.Classifier.inner()
assert worker.served.model.warm
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "sklearn", "torchvision"))))
"""


def test_the_service_starts_without_torch_or_scikit_learn(serving_models: ServingModels):
    result = subprocess.run(
        [sys.executable, "-c", START_A_WORKER],
        cwd=PROJECT_ROOT,
        env={**os.environ, **server_env(serving_models.home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
