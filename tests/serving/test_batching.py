"""The adaptive batcher on its own: batches counted in images, answers routed back, bounds enforced."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import ImageBatcher, Overloaded


class SlowModel:
    """Doubles its input, takes `seconds` per run, and records every batch size it saw."""

    def __init__(self, seconds: float = 0.02, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batches.append(len(pixels))
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model exploded")
        return pixels * 2


def requests(sizes: list[int]) -> list[np.ndarray]:
    """Request i holds `sizes[i]` rows whose values encode (request, row), so misrouting shows."""
    return [np.array([[100 * i + row] for row in range(size)], dtype=np.float64) for i, size in enumerate(sizes)]


def run_concurrently(batcher: ImageBatcher, inputs: list[np.ndarray]) -> list:
    async def main():
        return await asyncio.gather(*(batcher.infer(x) for x in inputs), return_exceptions=True)

    return asyncio.run(main())


def test_concurrent_requests_share_runs_and_get_their_own_rows():
    model = SlowModel()
    with ThreadPoolExecutor(1) as executor:
        batcher = ImageBatcher(model, executor, max_images=8, max_latency_ms=5000)
        inputs = requests([1] * 20)
        outputs = run_concurrently(batcher, inputs)
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert sum(model.batches) == 20
    assert max(model.batches) == 8  # limited, and actually reached while the model was busy


def test_an_idle_model_runs_a_lone_request_at_once():
    """No waiting to fill a batch: a single request costs one model run, far below the latency bound."""
    model = SlowModel(seconds=0.01)
    with ThreadPoolExecutor(1) as executor:
        batcher = ImageBatcher(model, executor, max_images=32, max_latency_ms=5000)
        start = time.perf_counter()
        (output,) = run_concurrently(batcher, requests([1]))
        elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(output, requests([1])[0] * 2)
    assert model.batches == [1]
    assert elapsed < 1.0


def test_limit_is_counted_in_images_and_large_requests_are_split():
    model = SlowModel()
    observed: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = ImageBatcher(model, executor, max_images=4, max_latency_ms=5000, on_batch=observed.append)
        inputs = requests([3, 3, 10, 1])
        outputs = run_concurrently(batcher, inputs)
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert all(size <= 4 for size in model.batches)
    assert sum(model.batches) == 17
    assert observed == model.batches


def test_images_waiting_past_the_latency_bound_are_refused():
    model = SlowModel(seconds=0.2)
    with ThreadPoolExecutor(1) as executor:
        batcher = ImageBatcher(model, executor, max_images=1, max_latency_ms=50)
        outputs = run_concurrently(batcher, requests([1, 1, 1]))
    assert isinstance(outputs[0], np.ndarray)
    refused = [o for o in outputs[1:] if isinstance(o, Overloaded)]
    assert refused and refused[0].bound_ms == pytest.approx(50)
    assert "above the latency bound of 50 ms" in str(refused[0])


def test_a_model_error_reaches_every_request_in_the_batch_and_the_batcher_goes_on():
    failing = SlowModel(fail=True)
    with ThreadPoolExecutor(1) as executor:
        batcher = ImageBatcher(failing, executor, max_images=8, max_latency_ms=5000)
        outputs = run_concurrently(batcher, requests([1, 2, 1]))
        assert all(isinstance(o, RuntimeError) for o in outputs)
        failing.fail = False
        (again,) = run_concurrently(batcher, requests([2]))
    np.testing.assert_array_equal(again, requests([2])[0] * 2)


def test_a_cancelled_request_does_not_block_the_others():
    model = SlowModel(seconds=0.05)

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = ImageBatcher(model, executor, max_images=1, max_latency_ms=5000)
            first = asyncio.ensure_future(batcher.infer(np.ones((1, 1))))
            doomed = asyncio.ensure_future(batcher.infer(np.ones((1, 1))))
            last = asyncio.ensure_future(batcher.infer(np.full((1, 1), 3.0)))
            await asyncio.sleep(0.01)
            doomed.cancel()
            return await first, await last

    first, last = asyncio.run(main())
    assert first[0, 0] == 2 and last[0, 0] == 6
    assert sum(model.batches) == 2  # the cancelled request never reached the model


class ScaledModel(SlowModel):
    """Multiplies by its own factor, so an output computed by the wrong model shows."""

    def __init__(self, factor: float, journal: list[tuple[float, int]]) -> None:
        super().__init__(seconds=0.02)
        self.factor, self.journal = factor, journal

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.journal.append((self.factor, len(pixels)))
        time.sleep(self.seconds)
        return pixels * self.factor


def test_a_batch_never_mixes_two_models_and_each_request_gets_its_own_models_answer():
    """During a model swap, old and new requests queue together: each run takes one model's jobs only."""
    journal: list[tuple[float, int]] = []
    old, new = ScaledModel(2.0, journal), ScaledModel(3.0, journal)
    inputs = requests([1] * 24)
    models = [old if i % 3 else new for i in range(len(inputs))]  # interleaved in the queue

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = ImageBatcher(old, executor, max_images=8, max_latency_ms=5000)
            return await asyncio.gather(*(batcher.infer(x, model) for x, model in zip(inputs, models, strict=True)))

    outputs = asyncio.run(main())
    for x, y, model in zip(inputs, outputs, models, strict=True):
        np.testing.assert_array_equal(y, x * model.factor)
    assert sum(size for _, size in journal) == 24
    assert {factor for factor, _ in journal} == {2.0, 3.0}
    assert max(size for _, size in journal) == 8  # still batched, one model per run
