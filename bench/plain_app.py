"""The baseline a user would write instead of the service: FastAPI + ONNX Runtime, nothing else.

Two uvicorn workers (uvloop, httptools), one ONNX Runtime session per worker with the service's thread
settings, the same model bundle and the same decoding and preprocessing functions as the service
(`prepare_pixels`, `normalize`, `softmax`), one model run per request: no batching, no metrics, no
validation beyond what decoding does. The load benchmark runs it interleaved with the service, so the
service's extra machinery must pay for itself against this.

    TRANSFERLINE_PLAIN_APP_BUNDLE=export uvicorn bench.plain_app:app --workers 2 --loop uvloop --http httptools
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, HTTPException, UploadFile

from transferline.data.imaging import ImageLimits, ImageRejected
from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.evaluation.onnx_classifier import INPUT_NAME, OUTPUT_NAME, softmax
from transferline.evaluation.onnx_export import cpu_session
from transferline.evaluation.scoring import prepare_pixels

BUNDLE_ENV = "TRANSFERLINE_PLAIN_APP_BUNDLE"
THREADS_ENV = "TRANSFERLINE_PLAIN_APP_ORT_THREADS"
MODEL: dict = {}


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    bundle = Path(os.environ[BUNDLE_ENV])
    MODEL["session"] = cpu_session(bundle / "model.onnx", int(os.environ.get(THREADS_ENV, "1")))
    MODEL["spec"] = PreprocessSpec.from_dict(json.loads((bundle / "preprocess.json").read_text()))
    MODEL["classes"] = json.loads((bundle / "classes.json").read_text())["classes"]
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/readyz")
def ready() -> dict:
    return {"ready": "session" in MODEL}


@app.post("/classify")
def classify(image: UploadFile, top_k: int = 5) -> dict:
    """A plain `def`: FastAPI runs it in its thread pool, as its documentation advises for blocking work."""
    try:
        pixels = prepare_pixels(image.file.read(), MODEL["spec"], ImageLimits())[None]
    except ImageRejected as error:
        raise HTTPException(status_code=415, detail=str(error)) from error
    logits = MODEL["session"].run([OUTPUT_NAME], {INPUT_NAME: normalize(pixels, MODEL["spec"])})[0]
    probabilities = softmax(logits.astype(np.float64))[0]
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return {"predictions": [{"label": MODEL["classes"][i], "probability": float(probabilities[i])} for i in order]}


@contextlib.contextmanager
def running_plain_app(
    bundle: Path, log_path: Path, port: int, workers: int = 2, ort_threads: int = 1, ready_timeout_s: float = 60.0
) -> Iterator[str]:
    """The plain app on 127.0.0.1:`port` for the duration of the block (its base URL), always stopped."""
    command = [
        *(sys.executable, "-m", "uvicorn", "bench.plain_app:app", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log"),
    ]
    env = {**os.environ, BUNDLE_ENV: str(bundle), THREADS_ENV: str(ort_threads)}
    root = Path(__file__).resolve().parents[1]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log_path, ready_timeout_s)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the plain app exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).json().get("ready"):
                return
        time.sleep(0.2)
    raise RuntimeError(f"the plain app was not ready after {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
