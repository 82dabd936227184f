"""The prediction service: the champion ONNX model on ONNX Runtime, behind BentoML.

Serve from the project root (settings: the `serve` section of params.yaml):

    bentoml serve serving.service:Classifier        # or `bentoml serve .` (reads bentofile.yaml)

Endpoints: POST /classify (one image), POST /classify_batch (several), GET or POST /metadata, and
BentoML's /livez, /readyz (ready once the model is loaded and a warm-up inference ran), /metrics
(Prometheus) and /docs.json (OpenAPI: BentoML's document, completed by serving/openapi.py). Every
prediction carries the model tag and data version. Malformed input gets a JSON 4xx
`{"error": ..., "detail": ...}`, never a 500.

A worker decodes and validates each request's images with the same functions as training
(`decode_image`, `resize_for_model`, `normalize`), then hands the pixels to an `ImageBatcher`, which
runs images from concurrent requests through the model together (see serving/batching.py for why
this is not BentoML's `batchable=True`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from serving.auth import BearerTokenAuth
from serving.batching import ImageBatcher, Overloaded
from serving.champion import load_bundle, promotion_time, served_model_tag
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
from serving.prediction_log import PredictionLog
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
from serving.settings import load_serve_params
from transferline.data.imaging import ImageLimits, ImageRejected
from transferline.evaluation.onnx_classifier import INPUT_NAME, OUTPUT_NAME, OnnxClassifier, softmax
from transferline.evaluation.scoring import prepare_pixels
from transferline.monitoring.ood import load_detector

log = logging.getLogger("transferline.serving")
LOGGED_LABELS = 3  # top labels kept per prediction-log entry

# Read when the service is defined: BentoML needs workers, host and port, and `bentoml build` the model.
# Without a model to serve, `bentoml serve` stops here with the fix (NoChampion), not in every worker.
SETTINGS = load_serve_params()
SERVED_TAG = served_model_tag()


@bentoml.service(
    name="transferline-classifier",
    workers=SETTINGS.workers,
    http={"host": SETTINGS.host, "port": SETTINGS.port},
    logging={"access": {"enabled": SETTINGS.access_log}},
    traffic={"timeout": 60},
)
class Classifier:
    """Image classifier trained by transferline: upload an image, get the top-k labels with probabilities."""

    bundled_model = bentoml.models.BentoModel(SERVED_TAG)  # declared, so `bentoml build` packs it

    def __init__(self) -> None:
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)  # BentoML leaves the root logger at WARNING; the startup line matters
        self.bundle = load_bundle(SERVED_TAG)
        decision_file = self.bundle.path / "decision.json"  # complete; store metadata drops null values
        self.gate_decision = (
            json.loads(decision_file.read_text())
            if decision_file.is_file()
            else self.bundle.metadata.get("gate_decision", {})
        )
        self.model = OnnxClassifier.open(
            self.bundle.onnx_path, self.bundle.classes, self.bundle.preprocess, SETTINGS.provider, SETTINGS.ort_threads
        )
        self.ood = load_detector(self.bundle.path)
        self.prediction_log = None
        if SETTINGS.prediction_log:
            self.prediction_log = PredictionLog(SETTINGS.log_dir, SETTINGS.log_max_bytes, SETTINGS.log_backups)
            self.prediction_log.start()
        self.data_version = str(self.bundle.metadata.get("data_version", "unknown"))
        self.promoted_at = promotion_time(self.bundle.tag)
        self.input_limits = InputLimits(
            SETTINGS.max_request_images, SETTINGS.max_image_bytes, SETTINGS.top_k_default, SETTINGS.top_k_max
        )
        self.image_limits = ImageLimits(SETTINGS.max_image_bytes, SETTINGS.max_image_pixels)
        self.metrics = create_metrics()
        self.inference_thread = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self.decode_threads = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self.batcher = (
            ImageBatcher(
                self.model.logits,
                self.inference_thread,
                SETTINGS.max_batch_images,
                SETTINGS.max_latency_ms,
                on_batch=self.metrics.observe_batch,
            )
            if SETTINGS.batching
            else None
        )
        warm_s = self.model.warm_up((1, SETTINGS.max_batch_images) if SETTINGS.batching else (1,))
        self.metrics.model_info.labels(
            model_tag=self.bundle.tag, data_version=self.data_version, provider=self.model.provider
        ).set(1)
        log.info(
            "serving %s (data %s) on %s, %d ORT thread(s), batching %s; warm-up %.2f s",
            self.bundle.tag,
            self.data_version,
            self.model.provider,
            SETTINGS.ort_threads,
            f"up to {SETTINGS.max_batch_images} images" if SETTINGS.batching else "off",
            warm_s,
        )

    async def __is_ready__(self) -> bool:
        """Ready once the model is loaded and its warm-up inference has run (async: no thread per probe)."""
        return self.model.warm

    @bentoml.on_shutdown
    def release_threads(self) -> None:
        if self.prediction_log is not None:
            self.prediction_log.close()
        self.inference_thread.shutdown(wait=False, cancel_futures=True)
        self.decode_threads.shutdown(wait=False, cancel_futures=True)

    @bentoml.api(route="/classify", input_spec=ClassifyInput, output_spec=Classification)
    async def classify(self, request: Request) -> Classification | JSONResponse:
        """Classify one image: multipart `image` file or JSON {"image_b64": ...}; optional `top_k`."""
        try:
            parsed = await parse_image_request(request, SINGLE, self.input_limits)
            logits = await self._logits(parsed.images, SINGLE)
        except ApiError as exc:
            return self._refuse("classify", exc)
        probabilities, scores, flags = self._judge(logits)
        self._log(parsed.images, logits, probabilities, scores, flags)
        return Classification(
            model_tag=self.bundle.tag,
            data_version=self.data_version,
            predictions=self._top_k(probabilities[0], parsed.top_k),
            out_of_distribution=bool(flags[0]),
            ood_score=float(scores[0]),
        )

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchInput, output_spec=BatchClassification)
    async def classify_batch(self, request: Request) -> BatchClassification | JSONResponse:
        """Classify several images in one request: multipart `images` files or JSON {"images_b64": [...]}."""
        try:
            parsed = await parse_image_request(request, BATCH, self.input_limits)
            logits = await self._logits(parsed.images, BATCH)
        except ApiError as exc:
            return self._refuse("classify_batch", exc)
        probabilities, scores, flags = self._judge(logits)
        self._log(parsed.images, logits, probabilities, scores, flags)
        return BatchClassification(
            model_tag=self.bundle.tag,
            data_version=self.data_version,
            results=[
                ImageResult(
                    predictions=self._top_k(row, parsed.top_k), out_of_distribution=bool(flag), ood_score=float(score)
                )
                for row, score, flag in zip(probabilities, scores, flags, strict=True)
            ],
        )

    @bentoml.api(route="/metadata", input_spec=NoInput)
    def metadata(self) -> ModelMetadata:
        """The model served: tag, classes, input spec, provider, lineage, metrics and its gate decision."""
        return self.describe()

    def describe(self) -> ModelMetadata:
        info = self.bundle.metadata
        spec = self.bundle.preprocess
        return ModelMetadata(
            model_tag=self.bundle.tag,
            data_version=self.data_version,
            classes=self.bundle.classes,
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
            provider=self.model.provider,
            git_commit=info.get("git_commit"),
            metrics=info.get("metrics", {}),
            gate_decision=self.gate_decision,
            registered_at=info.get("registered_at"),
            promoted_at=self.promoted_at,
            out_of_distribution=self.ood.summary(),
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

    def _log(
        self, images: list[bytes], logits: np.ndarray, probabilities: np.ndarray, scores: np.ndarray, flags: np.ndarray
    ) -> None:
        """One prediction-log entry per image: queued here, encoded and written by the log's own thread."""
        if self.prediction_log is None:
            return
        now = time.time()
        for data, row_logits, row, score, flag in zip(images, logits, probabilities, scores, flags, strict=True):
            top = np.argsort(-row, kind="stable")[:LOGGED_LABELS]
            entry = {
                "time": now,
                "model_tag": self.bundle.tag,
                "labels": [self.bundle.classes[i] for i in top],
                "probabilities": [round(float(row[i]), 5) for i in top],
                "ood_score": round(float(score), 5),
                "out_of_distribution": bool(flag),
                "embedding": [round(float(x), 4) for x in row_logits],  # the logits: the drift check's sample
                "request_bytes": len(data),
            }
            if SETTINGS.log_images:
                entry["image_b64"] = base64.b64encode(data).decode()
            self.prediction_log.record(entry)

    def _judge(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, OOD scores and flags from one batch of logits."""
        scores, flags = self.ood.flags(logits)
        return softmax(logits), scores, flags

    async def _logits(self, images: list[bytes], fields: Fields) -> np.ndarray:
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self.decode_threads, self._decode_all, images, fields)
        if self.batcher is None:
            return await loop.run_in_executor(self.inference_thread, self.model.logits, pixels)
        try:
            return await self.batcher.infer(pixels)
        except Overloaded as exc:
            raise ApiError(503, f"server busy: {exc}; retry later", headers={"Retry-After": "1"}) from None

    def _decode_all(self, images: list[bytes], fields: Fields) -> np.ndarray:
        """uint8 model input for every image, or one ApiError naming each image that cannot be used."""
        pixels, problems = [], []
        for index, data in enumerate(images):
            try:
                pixels.append(prepare_pixels(data, self.model.spec, self.image_limits))
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

    def _top_k(self, probabilities: np.ndarray, k: int) -> list[LabelProbability]:
        return [LabelProbability(label=p.label, probability=p.probability) for p in self.model.top_k(probabilities, k)]

    def _refuse(self, endpoint: str, error: ApiError) -> JSONResponse:
        self.metrics.count_rejection(endpoint, error.status)
        return error.response()


UI_PAGE = Path(__file__).with_name("ui.html")


async def _ui(_: Request) -> HTMLResponse:
    """The page for people: pick or drop an image, see the top labels, the OOD flag and the model."""
    return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"))


async def _model_card(_: Request) -> PlainTextResponse:
    """The served model's card (model_card.md from its gate run), as Markdown text."""
    card = bentoml.get_current_service().bundle.path / "model_card.md"
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


# GET /metadata for curl and browsers (BentoML API methods answer POST only), and /docs.json completed by
# serving/openapi.py: mounted routes are matched before BentoML's own /docs.json.
Classifier.mount_asgi_app(
    Starlette(
        routes=[
            Route("/metadata", _metadata_get, methods=["GET"]),
            Route("/docs.json", _docs_json, methods=["GET"]),
            Route("/ui", _ui, methods=["GET"]),
            Route("/model-card", _model_card, methods=["GET"]),
        ]
    ),
    path="/",
)
Classifier.add_asgi_middleware(BearerTokenAuth)
Classifier.add_asgi_middleware(RefusePickle)
