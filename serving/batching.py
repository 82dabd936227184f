"""Adaptive batching inside one worker: images from concurrent requests go through the model together.

Why not BentoML's `batchable=True` API: it batches whole HTTP requests of one endpoint, takes a single
argument (no per-request options such as top_k), and cannot answer one bad request with its own 4xx.
Calling a batchable method from another API of the same service goes through an internal HTTP hop,
which fails under load (DESIGN.md, section 3). So requests are decoded and validated first, and only
their pixels meet here.

The policy is greedy: an idle model runs a request at once (no added latency at low load); while it
runs, new images queue, and the next run takes all of them up to `max_images` (counted in images, not
requests; a large request is split). An image that waited longer than `max_latency_ms` is refused
with `Overloaded` (the service answers 503), so latency stays bounded when load exceeds capacity.

A batch never mixes models: each request names the model function that must run its pixels (the model
the request took when it started, serving/served_model.py), and a run takes only the queued jobs of the
oldest job's model. While a swap is under way, old and new requests simply alternate runs; the one
batcher and its loop stay, whatever the number of swaps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("transferline.serving")


class Overloaded(Exception):
    """The request waited longer than the latency bound before the model could take it."""

    def __init__(self, waited_ms: float, bound_ms: float) -> None:
        super().__init__(f"waited {waited_ms:.0f} ms in the queue, above the latency bound of {bound_ms:.0f} ms")
        self.waited_ms = waited_ms
        self.bound_ms = bound_ms


# A model's answer to a batch: one item per image, in order (an array's rows, or a list).
Answer = np.ndarray | list
Model = Callable[[np.ndarray], Answer]


def joined(answers: list[Answer]) -> Answer:
    """Answers to consecutive chunks of images, as one answer."""
    if len(answers) == 1:
        return answers[0]
    if isinstance(answers[0], np.ndarray):
        return np.concatenate(answers)
    return [item for answer in answers for item in answer]


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future
    run: Model
    enqueued: float = field(default_factory=time.monotonic)


class ImageBatcher:
    """Collects pixel batches from concurrent requests and runs them through their model in `executor`.

    `run` is the model of requests that name none."""

    def __init__(
        self,
        run: Model,
        executor: Executor,
        max_images: int,
        max_latency_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_images = max_images
        self.max_latency_s = max_latency_ms / 1000
        self._on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    async def infer(self, pixels: np.ndarray, run: Model | None = None) -> Answer:
        """Output rows of model `run` (default: the batcher's) for `pixels` (N, ...), computed alongside other
        requests' images for the same model."""
        self._ensure_running()
        loop = asyncio.get_running_loop()
        run = self._run if run is None else run
        jobs = [
            _Job(pixels[start : start + self.max_images], loop.create_future(), run)
            for start in range(0, len(pixels), self.max_images)
        ]
        self._queue.extend(jobs)
        self._wake.set()
        try:
            results = [await job.future for job in jobs]
        finally:
            for job in jobs:
                job.future.cancel()  # no-op when done; drops queued chunks of a cancelled request
        return joined(results)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            if self._loop_task is not None and not self._loop_task.cancelled() and self._loop_task.exception():
                log.error("batching loop had stopped: %r; restarting it", self._loop_task.exception())
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._serve_forever(), name="image-batcher")

    def _next_batch(self) -> list[_Job]:
        """Queued jobs of one model for one run, up to max_images, oldest first; the model is the oldest live
        job's. Jobs of another model stay queued, in order. Refuses jobs that waited past the latency bound."""
        batch: list[_Job] = []
        kept: list[_Job] = []
        images = 0
        now = time.monotonic()
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # the request was cancelled (client gone) or already failed
                self._queue.popleft()
                continue
            if batch and job.run != batch[0].run:  # == : bound methods of one model compare equal
                kept.append(self._queue.popleft())
                continue
            if images and images + len(job.pixels) > self.max_images:
                break
            self._queue.popleft()
            waited = now - job.enqueued
            if waited > self.max_latency_s:
                job.future.set_exception(Overloaded(waited * 1000, self.max_latency_s * 1000))
                continue
            batch.append(job)
            images += len(job.pixels)
        self._queue.extendleft(reversed(kept))
        return batch

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._next_batch()
            if not batch:
                continue
            pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([job.pixels for job in batch])
            try:
                outputs = await loop.run_in_executor(self._executor, batch[0].run, pixels)
            except Exception as exc:  # the model failed: every request in the batch gets the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(pixels))
            start = 0
            for job in batch:
                end = start + len(job.pixels)
                if not job.future.done():
                    job.future.set_result(outputs[start:end])
                start = end
