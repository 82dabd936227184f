"""The prediction service: the champion ONNX model on ONNX Runtime, behind BentoML.

Serve from the project root (settings: the `serve` section of params.yaml):

    bentoml serve serving.service:Classifier        # or `bentoml serve .` (reads bentofile.yaml)

Endpoints: POST /classify (one image), POST /classify_batch (several), GET or POST /metadata, and
BentoML's /livez, /readyz (ready once the model is loaded and a warm-up inference ran), /metrics
(Prometheus) and /docs.json (OpenAPI: BentoML's document, completed by serving/openapi.py). Every
prediction carries the tag and data version of the model that computed it. Malformed input gets a JSON
4xx `{"error": ..., "detail": ...}`, never a 500.

Admin (loopback clients only, plus the bearer token when one is set): POST /admin/swap {"tag": ...}
loads another registered model beside the current one in every worker, warms it and switches to it
without a restart or a failed request; GET /admin/status says which model each worker serves and the
digests of the code and settings the service runs (serving/swap.py, serving/code_digest.py).

A worker decodes and validates each request's images with the same functions as training
(`decode_image`, `resize_for_model`, `normalize`), then hands the pixels to an `ImageBatcher`, which
runs images from concurrent requests of the same model through it together (see serving/batching.py
for why this is not BentoML's `batchable=True`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from serving.auth import BearerTokenAuth, admin_refusal
from serving.batching import ImageBatcher, Overloaded
from serving.champion import served_model_tag
from serving.code_digest import code_digest, settings_digest
from serving.http_input import (
    BATCH,
    SINGLE,
    ApiError,
    Fields,
    InputLimits,
    RefusePickle,
    parse_image_request,
)
from serving.metrics import create_metrics
from serving.openapi import DocLimits, complete_spec
from serving.prediction_log import LOGGED_LABELS, PredictionLog
from serving.registry import bentoml_home
from serving.schemas import (
    BatchClassification,
    Classification,
    ClassifyBatchInput,
    ClassifyInput,
    ImageResult,
    LabelProbability,
    ModelMetadata,
    NoInput,
)
from serving.served_model import ImageAnswer, ModelUnusable, ServedModel, load_served_model
from serving.settings import load_serve_params
from serving.swap import (
    SwapBusy,
    SwapFailed,
    SwapFollower,
    control_dir,
    coordinate_swap,
    prepare_control_dir,
    startup_tag,
    swap_lock,
    worker_statuses,
)
from serving.swap import read_pointer as read_swap_pointer
from transferline.data.imaging import ImageLimits, ImageRejected
from transferline.evaluation.onnx_classifier import INPUT_NAME, OUTPUT_NAME
from transferline.evaluation.scoring import prepare_pixels

log = logging.getLogger("transferline.serving")
SWAP_WARM_UP = (1,)  # batch sizes a model swapped in is warmed with (at start: one image and a full batch)

# Read when the service is defined: BentoML needs workers, host and port, and `bentoml build` the model.
# Without a model to serve, `bentoml serve` stops here with the fix (NoChampion), not in every worker.
# SERVED_TAG is the model a service starts with; POST /admin/swap changes it while it runs.
SETTINGS = load_serve_params()
SERVED_TAG = served_model_tag()


@bentoml.service(
    name="transferline-classifier",
    workers=SETTINGS.workers,
    http={"host": SETTINGS.host, "port": SETTINGS.port},
    logging={"access": {"enabled": SETTINGS.access_log}},
    traffic={"timeout": 60},
    # BentoML traces every request by default; with no exporter configured the spans only cost CPU.
    tracing={} if SETTINGS.tracing else {"excluded_urls": [".*"]},
)
class Classifier:
    """Image classifier trained by transferline: upload an image, get the top-k labels with probabilities."""

    bundled_model = bentoml.models.BentoModel(SERVED_TAG)  # declared, so `bentoml build` packs it

    def __init__(self) -> None:
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)  # BentoML leaves the root logger at WARNING; the startup line matters
        self.worker = bentoml.server_context.worker_index or 1
        self.control_dir = control_dir()
        prepare_control_dir(self.control_dir)
        # After a swap, a worker that (re)starts serves what the other workers serve, not the tag of the import.
        self.served: ServedModel = load_served_model(startup_tag(self.control_dir, SERVED_TAG), SETTINGS)
        self.code_root = Path(__file__).resolve().parents[1]
        self.digests = {"code": code_digest(self.code_root), "settings": settings_digest(SETTINGS)}
        self.prediction_log = None
        if SETTINGS.prediction_log:
            self.prediction_log = PredictionLog(SETTINGS.log_dir, SETTINGS.log_max_bytes, SETTINGS.log_backups)
            self.prediction_log.start()
        self.input_limits = InputLimits(
            SETTINGS.max_request_images, SETTINGS.max_image_bytes, SETTINGS.top_k_default, SETTINGS.top_k_max
        )
        self.image_limits = ImageLimits(SETTINGS.max_image_bytes, SETTINGS.max_image_pixels)
        self.metrics = create_metrics()
        self.inference_thread = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self.decode_threads = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self.load_thread = ThreadPoolExecutor(1, thread_name_prefix="swap-load")
        self.batcher = (
            ImageBatcher(
                self.served.answer,
                self.inference_thread,
                SETTINGS.max_batch_images,
                SETTINGS.max_latency_ms,
                on_batch=self.metrics.observe_batch,
            )
            if SETTINGS.batching
            else None
        )
        self._set_model_info(self.served, 1)
        self.follower = SwapFollower(
            self.control_dir, self.worker, lambda: self.served, self._load_for_swap, self._switch
        )
        self.follower.start()
        # What is loaded by now lives as long as the worker: moved out of the collector's reach, so the full
        # collections that load triggers stay short (they made the p99 latency under load; bench/results/load.md).
        gc.collect()
        gc.freeze()
        log.info(
            "worker %d serving %s (data %s) on %s, %d ORT thread(s), batching %s; warm-up %.2f s",
            self.worker,
            self.served.tag,
            self.served.data_version,
            self.served.model.provider,
            SETTINGS.ort_threads,
            f"up to {SETTINGS.max_batch_images} images" if SETTINGS.batching else "off",
            self.served.warm_s,
        )

    def _load_for_swap(self, tag: str) -> ServedModel:
        """A model to swap to: its gate must have passed, and one image warms it (SWAP_WARM_UP), as the
        worker serves meanwhile and every full batch run would be taken from the requests in flight."""
        return load_served_model(tag, SETTINGS, require_passed_gate=True, warm_batches=SWAP_WARM_UP)

    def _switch(self, served: ServedModel) -> None:
        """Make `served` the current model: one reference assignment. Requests that already took the old
        reference finish with it; every request that starts afterwards gets the new one."""
        previous, self.served = self.served, served
        self._set_model_info(previous, 0)
        self._set_model_info(served, 1)
        log.info("worker %d switched from %s to %s", self.worker, previous.tag, served.tag)

    def _set_model_info(self, served: ServedModel, value: int) -> None:
        self.metrics.model_info.labels(
            model_tag=served.tag, data_version=served.data_version, provider=served.model.provider
        ).set(value)

    async def swap_to(self, tag: str) -> dict:
        """POST /admin/swap: load, check and warm `tag` in this worker, then switch every worker to it
        (serving/swap.py). Raises ModelUnusable (nothing changed), SwapBusy, or SwapFailed (every worker kept
        the old model, or one did not confirm the switch)."""
        loop = asyncio.get_running_loop()
        statuses = worker_statuses(self.control_dir, SETTINGS.workers)
        if tag == self.served.tag and all(status["tag"] == tag for status in statuses):
            return {"model_tag": tag, "previous": tag, "unchanged": True, "workers": statuses}
        with swap_lock(self.control_dir):
            serving = self.served.tag
            start = time.monotonic()
            loaded = await loop.run_in_executor(self.load_thread, self._load_for_swap, tag)
            load_s = time.monotonic() - start
            result = await loop.run_in_executor(  # the loop's default threads: polling, at normal priority
                None,
                functools.partial(
                    coordinate_swap,
                    self.control_dir,
                    SETTINGS.workers,
                    loaded.tag,
                    serving,
                    lambda generation: self.follower.offer(generation, loaded),
                ),
            )
        log.info("swapped %s -> %s in %d worker(s)", serving, loaded.tag, SETTINGS.workers)
        return {**result, "load_s": round(load_s, 3), "unchanged": False}

    def admin_status(self) -> dict:
        """GET /admin/status: the model of every worker, the swap pointer, and the digests of code and settings."""
        statuses = worker_statuses(self.control_dir, SETTINGS.workers)
        tags = {status["tag"] for status in statuses}
        return {
            "model_tag": self.served.tag,
            "answered_by_worker": self.worker,
            "workers": statuses,
            "consistent": len(tags) == 1 and None not in tags,
            "swap": read_swap_pointer(self.control_dir),
            "code_digest": self.digests["code"],
            "settings_digest": self.digests["settings"],
            "model_store": str(bentoml_home()),
        }

    async def __is_ready__(self) -> bool:
        """Ready once the model is loaded and its warm-up inference has run (async: no thread per probe)."""
        return self.served.model.warm

    @bentoml.on_shutdown
    def release_threads(self) -> None:
        self.follower.stop()
        if self.prediction_log is not None:
            self.prediction_log.close()
        self.inference_thread.shutdown(wait=False, cancel_futures=True)
        self.decode_threads.shutdown(wait=False, cancel_futures=True)
        self.load_thread.shutdown(wait=False, cancel_futures=True)

    @bentoml.api(route="/classify", input_spec=ClassifyInput, output_spec=Classification)
    async def classify(self, request: Request) -> Response:
        """Classify one image: multipart `image` file or JSON {"image_b64": ...}; optional `top_k`."""
        served = self.served  # taken once: this request is answered by this model, whatever a swap does meanwhile
        try:
            parsed = await parse_image_request(request, SINGLE, self.input_limits)
            answers = await self._answers(served, parsed.images, SINGLE)
        except ApiError as exc:
            return self._refuse("classify", exc)
        self._log(served, parsed.images, answers)
        (answer,) = answers
        return json_response(
            Classification(
                model_tag=served.tag,
                data_version=served.data_version,
                predictions=top_k(answer, parsed.top_k),
                out_of_distribution=answer.out_of_distribution,
                ood_score=answer.ood_score,
            )
        )

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchInput, output_spec=BatchClassification)
    async def classify_batch(self, request: Request) -> Response:
        """Classify several images in one request: multipart `images` files or JSON {"images_b64": [...]}."""
        served = self.served
        try:
            parsed = await parse_image_request(request, BATCH, self.input_limits)
            answers = await self._answers(served, parsed.images, BATCH)
        except ApiError as exc:
            return self._refuse("classify_batch", exc)
        self._log(served, parsed.images, answers)
        return json_response(
            BatchClassification(
                model_tag=served.tag,
                data_version=served.data_version,
                results=[
                    ImageResult(
                        predictions=top_k(answer, parsed.top_k),
                        out_of_distribution=answer.out_of_distribution,
                        ood_score=answer.ood_score,
                    )
                    for answer in answers
                ],
            )
        )

    @bentoml.api(route="/metadata", input_spec=NoInput)
    def metadata(self) -> ModelMetadata:
        """The model served: tag, classes, input spec, provider, lineage, metrics and its gate decision."""
        return self.describe()

    def describe(self) -> ModelMetadata:
        served = self.served
        info = served.bundle.metadata
        spec = served.bundle.preprocess
        return ModelMetadata(
            model_tag=served.tag,
            data_version=served.data_version,
            classes=served.bundle.classes,
            input={
                "name": INPUT_NAME,
                "output": OUTPUT_NAME,
                "shape": ["N", 3, spec.image_size, spec.image_size],
                "dtype": "float32",
                "preprocess": spec.to_dict(),
                "max_image_bytes": SETTINGS.max_image_bytes,
                "max_image_pixels": SETTINGS.max_image_pixels,
                "max_request_images": SETTINGS.max_request_images,
            },
            provider=served.model.provider,
            git_commit=info.get("git_commit"),
            metrics=info.get("metrics", {}),
            gate_decision=served.gate_decision,
            registered_at=info.get("registered_at"),
            promoted_at=served.promoted_at,
            out_of_distribution=served.ood.summary(),
            serving={
                "batching": SETTINGS.batching,
                "max_batch_images": SETTINGS.max_batch_images,
                "max_latency_ms": SETTINGS.max_latency_ms,
                "ort_threads": SETTINGS.ort_threads,
                "workers": SETTINGS.workers,
                "top_k_default": SETTINGS.top_k_default,
                "top_k_max": SETTINGS.top_k_max,
            },
        )

    def _log(self, served: ServedModel, images: list[bytes], answers: list[ImageAnswer]) -> None:
        """One prediction-log entry per image: queued here, encoded and written by the log's own thread."""
        if self.prediction_log is None:
            return
        now = time.time()
        for data, answer in zip(images, answers, strict=True):
            entry = {
                "time": now,
                "model_tag": served.tag,
                "labels": answer.labels[:LOGGED_LABELS],
                "probabilities": [round(p, 5) for p in answer.probabilities[:LOGGED_LABELS]],
                "ood_score": round(answer.ood_score, 5),
                "out_of_distribution": answer.out_of_distribution,
                "embedding": answer.logits,  # the drift check's sample
                "request_bytes": len(data),
            }
            if SETTINGS.log_images:
                entry["image_b64"] = base64.b64encode(data).decode()
            self.prediction_log.record(entry)

    async def _answers(self, served: ServedModel, images: list[bytes], fields: Fields) -> list[ImageAnswer]:
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self.decode_threads, self._decode_all, served, images, fields)
        if self.batcher is None:
            return await loop.run_in_executor(self.inference_thread, served.answer, pixels)
        try:
            return await self.batcher.infer(pixels, served.answer)
        except Overloaded as exc:
            raise ApiError(503, f"server busy: {exc}; retry later", headers={"Retry-After": "1"}) from None

    def _decode_all(self, served: ServedModel, images: list[bytes], fields: Fields) -> np.ndarray:
        """uint8 model input for every image, or one ApiError naming each image that cannot be used."""
        pixels, problems = [], []
        for index, data in enumerate(images):
            try:
                pixels.append(prepare_pixels(data, served.model.spec, self.image_limits))
            except ImageRejected as exc:
                problems.append({"index": index, "reason": exc.reason, "status": exc.status})
            except Exception as exc:  # hostile files can make PIL's format plugins raise other errors too
                log.warning("image %d could not be decoded", index, exc_info=True)
                reason = f"image could not be decoded ({type(exc).__name__}: {exc})"
                problems.append({"index": index, "reason": reason, "status": 422})
        if not problems:
            return np.stack(pixels)
        if not fields.many:
            reason = problems[0]["reason"]
            raise ApiError(problems[0]["status"], f"image rejected: {reason}", {"field": fields.file, "reason": reason})
        statuses = {problem["status"] for problem in problems}
        first = problems[0]
        raise ApiError(
            statuses.pop() if len(statuses) == 1 else 400,
            f"{len(problems)} of {len(images)} images rejected; image {first['index']}: {first['reason']}",
            problems,
        )

    def _refuse(self, endpoint: str, error: ApiError) -> JSONResponse:
        self.metrics.count_rejection(endpoint, error.status)
        return error.response()


def top_k(answer: ImageAnswer, k: int) -> list[LabelProbability]:
    return [
        LabelProbability(label=label, probability=p)
        for label, p in zip(answer.labels[:k], answer.probabilities[:k], strict=True)
    ]


def json_response(answer: BaseModel) -> Response:
    """An answer as one JSON body with its length: pydantic encodes it, and the response goes out in one send.
    (BentoML's own response for a returned model streams the body in chunks, each passed through every
    middleware, which cost about 5% of a worker's Python time under load, bench/results/load.md.)"""
    return Response(answer.model_dump_json(), media_type="application/json")


UI_PAGE = Path(__file__).with_name("ui.html")


async def _ui(_: Request) -> HTMLResponse:
    """The page for people: pick or drop an image, see the top labels, the OOD flag and the model."""
    return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"))


async def _model_card(_: Request) -> PlainTextResponse:
    """The served model's card (model_card.md from its gate run), as Markdown text."""
    card = bentoml.get_current_service().served.bundle.path / "model_card.md"
    if not card.is_file():
        return PlainTextResponse("this model was registered without a model card", status_code=404)
    return PlainTextResponse(card.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")


async def _metadata_get(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().describe().model_dump(mode="json"))


@functools.cache
def _openapi_document() -> dict:
    return complete_spec(Classifier.openapi_spec.asdict(), DocLimits(SETTINGS.top_k_max, SETTINGS.max_request_images))


async def _docs_json(_: Request) -> JSONResponse:
    return JSONResponse(_openapi_document())


SWAP_USAGE = 'send JSON {"tag": "transferline-classifier:<version>"} (see `python -m serving.registry list`)'


async def _admin_swap(request: Request) -> JSONResponse:
    """Swap every worker to another registered model without a restart (serving/swap.py): 200 once all serve it."""
    refused = admin_refusal(request)
    if refused is not None:
        return refused
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict) or set(body) != {"tag"} or not isinstance(body["tag"], str) or not body["tag"]:
        return ApiError(400, "malformed swap request", SWAP_USAGE).response()
    service = bentoml.get_current_service()
    try:
        return JSONResponse(await service.swap_to(body["tag"]))
    except ModelUnusable as exc:
        error = ApiError(exc.status, f"{exc}; still serving {service.served.tag}", {"serving": service.served.tag})
    except SwapBusy as exc:
        error = ApiError(409, str(exc), {"serving": service.served.tag}, headers={"Retry-After": "5"})
    except SwapFailed as exc:
        error = ApiError(exc.status, str(exc), {"serving": service.served.tag, "workers": exc.workers})
    log.warning("swap to %s refused: %s", body["tag"], error.error)
    return error.response()


async def _admin_status(request: Request) -> JSONResponse:
    """Which model each worker serves, the last swap, and the digests of the code and settings this service runs."""
    refused = admin_refusal(request)
    if refused is not None:
        return refused
    return JSONResponse(bentoml.get_current_service().admin_status())


# GET /metadata for curl and browsers (BentoML API methods answer POST only), /docs.json completed by
# serving/openapi.py (mounted routes are matched before BentoML's own /docs.json), and the admin routes
# (loopback clients only, and the token when one is set).
Classifier.mount_asgi_app(
    Starlette(
        routes=[
            Route("/metadata", _metadata_get, methods=["GET"]),
            Route("/docs.json", _docs_json, methods=["GET"]),
            Route("/ui", _ui, methods=["GET"]),
            Route("/model-card", _model_card, methods=["GET"]),
            Route("/admin/swap", _admin_swap, methods=["POST"]),
            Route("/admin/status", _admin_status, methods=["GET"]),
        ]
    ),
    path="/",
)
Classifier.add_asgi_middleware(BearerTokenAuth)
Classifier.add_asgi_middleware(RefusePickle)
