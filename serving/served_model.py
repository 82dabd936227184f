"""One model ready to answer: its ONNX session, OOD detector and lineage, loaded, checked and warmed.

The service holds exactly one `ServedModel` as its current model and replaces that reference when it
swaps (serving/swap.py). A request takes the reference once, when it starts, and uses that object for
decoding (the model's own image size), inference, the OOD flag and the `model_tag` of its answer, so a
swap half-way through a request never mixes two models in one answer. The object is immutable once
built; an old one lives on as long as a request still holds it.

`ServedModel.answer` turns a batch of pixels into one `ImageAnswer` per image, in plain Python values,
in the inference thread: softmax, OOD flags and ranking run once per batch there, and the request path
(the event loop, which shares the GIL with every other request of the worker) only reads lists.

`load_served_model` is the only way in: a model that cannot be served (files missing, ONNX unreadable,
an input or output that does not match its preprocess.json and classes.json) raises `ModelUnusable`
with the reason, before anything points at it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from serving.champion import load_bundle, promotion_time
from serving.prediction_log import LOGGED_LABELS
from serving.registry import MODEL_NAME, Champion, RegistryError
from transferline.config import ServeParams
from transferline.errors import TransferlineError
from transferline.evaluation.onnx_classifier import INPUT_NAME, OUTPUT_NAME, OnnxClassifier, softmax
from transferline.monitoring.ood import OodDetector, load_detector


class ModelUnusable(TransferlineError):
    """The model cannot be served; `status` is the HTTP status an admin request for it gets."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ImageAnswer:
    """One image's answer: `labels` and `probabilities` most probable first, as many as any request may ask
    for (serve.top_k_max) or the prediction log keeps; `logits` rounded to 4 decimals, the drift check's sample."""

    labels: list[str]
    probabilities: list[float]
    ood_score: float
    out_of_distribution: bool
    logits: list[float]


@dataclass(frozen=True)
class ServedModel:
    """Everything an answer needs from one model; never changed after `load_served_model` built it."""

    bundle: Champion
    model: OnnxClassifier
    ood: OodDetector
    gate_decision: dict
    data_version: str
    promoted_at: str | None
    warm_s: float
    ranked: int  # labels ranked per answer
    loaded_at: float = field(default_factory=time.time)

    @property
    def tag(self) -> str:
        return self.bundle.tag

    def answer(self, pixels: np.ndarray) -> list[ImageAnswer]:
        """uint8 (N, S, S, 3) -> one answer per image, from one model run."""
        logits, distances = self.model.answers(pixels)
        scores, flags = self.ood.flags(logits, distances)
        probabilities = softmax(logits)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.ranked]
        classes = self.bundle.classes
        rows = zip(
            order.tolist(),
            np.take_along_axis(probabilities, order, axis=1).tolist(),
            scores.tolist(),
            flags.tolist(),
            np.round(logits, 4).tolist(),
            strict=True,
        )
        return [ImageAnswer([classes[i] for i in top], p, s, f, z) for top, p, s, f, z in rows]


def warm_up_batches(settings: ServeParams) -> tuple[int, ...]:
    """The batch sizes the service runs: one image, and a full batch when batching is on."""
    return (1, settings.max_batch_images) if settings.batching else (1,)


def load_served_model(
    tag: str, settings: ServeParams, require_passed_gate: bool = False, warm_batches: tuple[int, ...] | None = None
) -> ServedModel:
    """Load `tag` from the model store, check its graph against its own metadata, and warm it up.

    Raises ModelUnusable: 404 for a tag the store does not hold, 422 for a model that is there but cannot
    be served (a file is missing or corrupt, shapes disagree, the warm-up fails, or, with
    `require_passed_gate`, its gate did not pass: a swap must not be a way around the gate, whereas a
    service started with a pinned $TRANSFERLINE_MODEL_TAG serves what it was told to). The warm-up runs
    `warm_batches` (default: the batch sizes the service runs); the first warm-up also checks the output.
    """
    if not tag.startswith(f"{MODEL_NAME}:"):
        raise ModelUnusable(f"{tag!r} is not a {MODEL_NAME} model (expected '{MODEL_NAME}:<version>')", 404)
    try:
        bundle = load_bundle(tag)
    except RegistryError as exc:
        raise ModelUnusable(str(exc), 404) from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnusable(f"model {tag} has an unreadable bundle ({type(exc).__name__}: {exc})") from None
    decision_file = bundle.path / "decision.json"  # complete; store metadata drops null values
    gate_decision = (
        json.loads(decision_file.read_text()) if decision_file.is_file() else bundle.metadata.get("gate_decision", {})
    )
    if require_passed_gate and not gate_decision.get("passed"):
        raise ModelUnusable(f"model {bundle.tag} did not pass its gate: {gate_decision.get('reason', 'no decision')}")
    try:
        model = OnnxClassifier.open(
            bundle.onnx_path, bundle.classes, bundle.preprocess, settings.provider, settings.ort_threads
        )
    except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable graphs
        raise ModelUnusable(f"model {bundle.tag}: ONNX Runtime cannot load model.onnx ({exc})") from None
    check_graph(model)
    try:
        ood = load_detector(bundle.path)
        if ood.needs_distance and not model.has_distance:
            raise ModelUnusable(
                f"model {bundle.tag}: its OOD detector ({ood.method}) reads the model's feature_distance "
                "output, which model.onnx does not have; export the model again"
            )
        warm_s = model.warm_up(warm_batches or warm_up_batches(settings))
    except ModelUnusable:
        raise
    except Exception as exc:
        raise ModelUnusable(f"model {bundle.tag} failed its warm-up ({type(exc).__name__}: {exc})") from None
    return ServedModel(
        bundle=bundle,
        model=model,
        ood=ood,
        gate_decision=gate_decision,
        data_version=str(bundle.metadata.get("data_version", "unknown")),
        promoted_at=promotion_time(bundle.tag),
        warm_s=warm_s,
        ranked=max(settings.top_k_max, LOGGED_LABELS),
    )


def check_graph(model: OnnxClassifier) -> None:
    """The graph takes `pixels` (N, 3, S, S) for the S of preprocess.json and gives `logits` (N, classes)."""
    size, classes = model.spec.image_size, model.classes
    if not classes or len(set(classes)) != len(classes):
        raise ModelUnusable(f"classes.json must list distinct class names, got {classes!r}")
    inputs = {node.name: node.shape for node in model.session.get_inputs()}
    outputs = {node.name: node.shape for node in model.session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelUnusable(
            f"model.onnx has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}"
        )
    expected_in = [None, 3, size, size]
    if not _matches(inputs[INPUT_NAME], expected_in):
        raise ModelUnusable(
            f"model.onnx takes {INPUT_NAME} of shape {inputs[INPUT_NAME]}, but preprocess.json says "
            f"images of {size}x{size}: expected [N, 3, {size}, {size}]"
        )
    if not _matches(outputs[OUTPUT_NAME], [None, len(classes)]):
        raise ModelUnusable(
            f"model.onnx gives {OUTPUT_NAME} of shape {outputs[OUTPUT_NAME]}, but classes.json lists "
            f"{len(classes)} classes"
        )


def _matches(shape: list, expected: list) -> bool:
    """A static dimension must equal the expected one; symbolic (named) dimensions and None match anything."""
    if len(shape) != len(expected):
        return False
    pairs = zip(shape, expected, strict=True)
    return all(want is None or not isinstance(got, int) or got == want for got, want in pairs)
