"""bench.serving_bench: its no-model service must answer like the real one, or it is no ceiling."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
import types

import pytest
from PIL import Image
from starlette.requests import Request

from bench.serving_bench import CONCURRENCY, NOOP_SERVICE, require_clean_ceiling, tree_cpu_seconds
from serving.schemas import Classification

BOUNDARY = "----transferline-test"


def _upload(data: bytes) -> Request:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/classify", "headers": headers}, receive)


def test_the_no_model_service_answers_a_valid_classification():
    module = types.ModuleType("noop_service")
    exec(compile(NOOP_SERVICE.replace("WORKERS", "1"), "noop_service.py", "exec"), module.__dict__)
    service = module.Noop.inner()
    image = io.BytesIO()
    Image.new("RGB", (128, 96), "gray").save(image, "JPEG")
    response = asyncio.run(service.classify(_upload(image.getvalue())))
    assert response.status_code == 200
    answer = Classification.model_validate_json(response.body)  # every field the real service's answer has
    assert len(answer.predictions) == 5 and not answer.out_of_distribution


def test_a_no_model_service_that_answered_errors_fails_the_benchmark():
    clean = {str(c): {"errors": 0} for c in CONCURRENCY}
    require_clean_ceiling({"no_model": clean})
    with pytest.raises(RuntimeError, match=r"no-model service answered errors .*'32': 14106"):
        require_clean_ceiling({"no_model": {**clean, "32": {"errors": 14106}}})


def test_the_service_cpu_is_summed_over_its_process_tree_only(tmp_path):
    """A service's CPU is that of `bentoml serve` and of every process under it (its workers)."""
    tick = os.sysconf("SC_CLK_TCK")

    def process(pid: int, parent: int, utime: int, stime: int, name: str = "python") -> None:
        (tmp_path / str(pid)).mkdir()
        fields = ["S", str(parent), str(pid), str(pid), "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) " + " ".join(fields) + " 0 0\n")

    process(100, 1, 3 * tick, tick)  # bentoml serve
    process(101, 100, 2 * tick, 0)  # its process manager
    process(102, 101, 20 * tick, 2 * tick, name="python -m worker (1)")  # a worker, in a session of its own
    process(200, 1, 50 * tick, 0)  # the load client, elsewhere
    (tmp_path / "300").mkdir()  # a process gone before its stat was read: skipped
    assert tree_cpu_seconds(100, tmp_path) == pytest.approx(28.0)
    assert tree_cpu_seconds(102, tmp_path) == pytest.approx(22.0)
    assert tree_cpu_seconds(200, tmp_path) == pytest.approx(50.0)
    # and on this machine: a child that spins for a while shows up under this process
    before = tree_cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    time.sleep(1.2)
    spent = tree_cpu_seconds(os.getpid()) - before
    child.wait()
    assert spent >= 0.5


def _level(requests_per_s: float) -> dict:
    return {
        "requests": int(requests_per_s * 6),
        "duration_us": 6_000_000,
        "p50_us": 1000,
        "p95_us": 2000,
        "p99_us": 3000,
        "max_us": 4000,
        "non_2xx": 0,
        "socket_errors": 0,
        "service_cpu_s": 1.0,
        "client_cpu_s": 0.1,
    }


def test_the_share_of_the_ceiling_is_the_median_of_rounds_paired_with_their_own_ceiling():
    """A ceiling phase run minutes after the service rounds (here: on a host twice as fast) must not set
    the share: each round counts against the ceiling measured right after it."""
    from bench.serving_bench import analyse

    measured = {
        name: {c: [_level(rate), _level(rate)] for c in CONCURRENCY}
        for name, rate in (("batching_on", 900.0), ("batching_off", 600.0), ("no_model", 5000.0))
    }
    formed = {c: {"runs": 10, "images": 40, "mean_images": 4.0, "le": {}} for c in CONCURRENCY}
    limits = {"processes": 2, "ort_threads": 1, "ort_images_per_s": {"1": 3600.0, "4": 4000.0}}
    paired = [
        {"requests_per_s": 900.0, "batch": 4, "ceiling_images_per_s": 2000.0, "share": 0.45},
        {"requests_per_s": 900.0, "batch": 4, "ceiling_images_per_s": 2250.0, "share": 0.40},
    ]
    results = analyse(measured, formed, limits, paired, "model:tag", 2, 12.0, 2)
    share = results["targets_at_32_clients"]["share_of_ceiling"]
    assert share["value"] == pytest.approx(0.425) and share["met"]
    assert results["ceilings"]["used_for_share"]["images_per_s"] == pytest.approx(2125.0)
