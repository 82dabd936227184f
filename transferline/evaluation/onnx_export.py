"""ONNX export with a real dynamic batch axis, parity against PyTorch, INT8 quantization, latency.

The exported graph takes `pixels`, float32 (N, 3, S, S) normalised exactly as
`transferline.data.preprocessing.normalize` makes it, and returns `logits` (N, classes) and, when
exported as a `ScoredModel`, `feature_distance` (N,): how far each image's features, at several depths
of the backbone, lie from the nearest class (transferline/monitoring/feature_gaussian.py), computed in
the graph so that the model file alone answers both "which class" and "is this one of my classes".
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferline.evaluation.onnx_classifier import DISTANCE_NAME, INPUT_NAME, OUTPUT_NAME

log = logging.getLogger("transferline.onnx")

MAX_BATCH = 4096


def scored_model(tapped, head, layers, head_taps: list[int]):
    """A classifier answering (logits, feature_distance); see ScoredModel. `tapped`: a module answering a
    list of feature matrices, one per entry of `layers` (the LayerGaussian of each,
    transferline/monitoring/feature_gaussian.py) then any more, of which those at `head_taps`, side by side,
    are the features `head` reads (transferline/model/backbones.py TransferModel.features);
    transferline/model/feature_taps.py's TappedBody."""
    import torch

    class GaussianDistance(torch.nn.Module):
        """One layer's squared Mahalanobis distance to the nearest class mean, in the probabilistic-PCA form
        FeatureGaussian.distances computes, with squared norms expanded so that memory stays (N, classes)
        for any number of classes. The expansion subtracts large squared norms, so it runs in float64 (in
        float32 the rounding of those norms, an ulp of ~0.06 at 1e6, would swamp a distance of a few
        units); the one large matrix, the D x r projection, stays float32, as a projection does not cancel."""

        def __init__(self, gaussian) -> None:
            super().__init__()
            # centred on the mean of the class means: the squared norms the expansion subtracts stay smaller
            center = gaussian.means.mean(axis=0)
            means = gaussian.means - center
            projected_means = means @ gaussian.components
            self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
            self.register_buffer("components", torch.as_tensor(gaussian.components, dtype=torch.float32))
            self.register_buffer("inverse_std", torch.as_tensor(gaussian.variances**-0.5, dtype=torch.float64))
            self.register_buffer("white_means", torch.as_tensor(projected_means * gaussian.variances**-0.5))
            self.residual = gaussian.residual_variance > 0
            if self.residual:
                self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
                self.register_buffer("projected_means", torch.as_tensor(projected_means, dtype=torch.float64))
                self.inverse_residual = 1.0 / gaussian.residual_variance

        @staticmethod
        def squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            """(N, K) squared euclidean distances between rows of a (N, d) and b (K, d)."""
            return (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None, :]

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            centred = features - self.center
            projected = (centred @ self.components).double()
            distance = self.squared(projected * self.inverse_std, self.white_means)
            if self.residual:
                rest = self.squared(centred.double(), self.means) - self.squared(projected, self.projected_means)
                distance = distance + rest.clamp(min=0) * self.inverse_residual
            # argmin + gather, not min: ONNX Runtime's symbolic shape inference (run before INT8 quantization)
            # loses the shape of a ReduceMin whose axes are an input, and then fails on the sum over layers
            return distance.gather(1, distance.argmin(dim=1, keepdim=True)).flatten()

    class ScoredModel(torch.nn.Module):
        """The classifier plus, from the same forward pass, the sum over the tapped layers of each one's
        distance standardised by its validation mean and standard deviation (combined_distance)."""

        def __init__(self) -> None:
            super().__init__()
            self.tapped, self.head, self.head_taps = tapped, head, list(head_taps)
            self.distances = torch.nn.ModuleList(GaussianDistance(layer.gaussian) for layer in layers)
            self.standardisation = [(layer.center, 1.0 / layer.scale) for layer in layers]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            taps = self.tapped(x)
            read = [taps[i] for i in self.head_taps]
            logits = self.head(read[0] if len(read) == 1 else torch.cat(read, dim=1))
            total = None
            scored = zip(taps[: len(self.distances)], self.distances, self.standardisation, strict=True)
            for features, distance, (center, inverse_scale) in scored:
                standardised = (distance(features) - center) * inverse_scale
                total = standardised if total is None else total + standardised
            return logits, total.float()

    return ScoredModel().eval()


def export_onnx(model, image_size: int, target: Path, output_names: tuple[str, ...] = (OUTPUT_NAME,)) -> dict:
    """Export with the dynamo exporter into one self-contained file; returns opset and sizes.
    A model answering (logits, feature_distance) is exported with output_names (OUTPUT_NAME, DISTANCE_NAME)."""
    import onnx
    import torch
    from torch.export import Dim

    model = model.eval()
    example = torch.zeros(2, 3, image_size, image_size)
    forward_arg = next(iter(_forward_arg_names(model)))
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(target),
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_shapes={forward_arg: {0: Dim("batch", min=1, max=MAX_BATCH)}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    proto = onnx.load(str(target))
    if strip_source_locations(proto.graph):
        onnx.save(proto, str(target))
    onnx.checker.check_model(proto)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise RuntimeError(f"exported batch axis is fixed at {batch_dim.dim_value}, expected dynamic")
    opset = next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))
    return {"opset": int(opset), "batch_axis": batch_dim.dim_param, "bytes": target.stat().st_size}


SOURCE_LOCATION_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


def strip_source_locations(graph) -> int:
    """Drop the exporter's per-node Python stack traces; returns how many were dropped.

    They name the absolute path of the checkout that ran the export, so the same model exported from two
    clones would differ byte for byte (and so would its DVC hash); they serve only to debug the exporter.
    """
    dropped = 0
    for node in graph.node:
        kept = [prop for prop in node.metadata_props if prop.key not in SOURCE_LOCATION_KEYS]
        if len(kept) != len(node.metadata_props):
            dropped += len(node.metadata_props) - len(kept)
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs):
                dropped += strip_source_locations(subgraph)
    return dropped


def _forward_arg_names(model) -> Iterator[str]:
    import inspect

    for name, parameter in inspect.signature(model.forward).parameters.items():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            yield name


def optimize_onnx(source: Path, target: Path) -> None:
    """Save ONNX Runtime's basic graph optimisations (constant folding, Conv+BN fusion, ...).

    Basic level only: the saved graph stays portable across execution providers, while a
    session still applies the hardware-specific levels when it loads the file.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def cpu_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(session, pixels: np.ndarray, batch_size: int, output: str = OUTPUT_NAME) -> np.ndarray:
    outputs = [
        session.run([output], {INPUT_NAME: pixels[start : start + batch_size]})[0]
        for start in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(outputs)


def run_answers(session, pixels: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and feature distances of a scored model, both from one run per batch."""
    parts = [
        session.run([OUTPUT_NAME, DISTANCE_NAME], {INPUT_NAME: pixels[start : start + batch_size]})
        for start in range(0, len(pixels), batch_size)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class Parity:
    batch_size: int
    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
        }


def check_parity(reference_logits: np.ndarray, session, pixels: np.ndarray, batch_size: int) -> Parity:
    """Compare ONNX Runtime's logits with PyTorch's on the same real images, batch by batch."""
    logits = run_batches(session, pixels, batch_size)
    return Parity(
        batch_size=batch_size,
        max_abs_diff=float(np.abs(logits - reference_logits).max()),
        top1_agreement=float((logits.argmax(1) == reference_logits.argmax(1)).mean()),
    )


def measure_latency(
    session, image_size: int, batch_size: int = 1, seconds: float = 2.0, outputs: tuple[str, ...] = (OUTPUT_NAME,)
) -> dict:
    """Wall-clock latency of `session.run` of `outputs` on one batch, after warm-up; median and p95 in ms.
    (ONNX Runtime runs only the nodes the requested outputs need.)"""
    pixels = np.random.default_rng(0).standard_normal((batch_size, 3, image_size, image_size), np.float32)
    names = list(outputs)
    for _ in range(3):
        session.run(names, {INPUT_NAME: pixels})
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 10:
        start = time.perf_counter()
        session.run(names, {INPUT_NAME: pixels})
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "batch_size": batch_size,
        "runs": len(times),
        "p50_ms": statistics.median(times),
        "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))],
        "images_per_s": batch_size * 1000 / statistics.mean(times),
    }


def float_ends(model) -> list[str]:
    """Names of the first convolution and of the matrix products after the last convolution (the
    classifier) of an ONNX graph.

    They are the layers INT8 hurts most: the first sees raw pixels with per-image ranges and has few
    weights to average the rounding out; the classifier writes the logits a top-1 decision compares.
    ONNX graphs are stored in topological order, so first and last are by position.
    """
    nodes = list(model.graph.node)
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    after = convs[-1] if convs else -1
    products = [node.name for node in nodes[after + 1 :] if node.op_type in ("Gemm", "MatMul")]
    return [*(nodes[i].name for i in convs[:1]), *products]


def name_nodes(model) -> None:
    """Give every unnamed node a unique name: nodes are excluded from quantization by name."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def classifier_only(source: Path, target: Path) -> None:
    """The graph's `logits` alone, without the feature distance: what the INT8 variant is built from.

    Quantized activations move the tapped features, and so the distance: on the default model's test
    images the INT8 graph's distance correlated 0.68 with the FP32 one's, a mean gap of 1.4 of its
    standard deviations. The OOD threshold (export/monitoring.json) is calibrated on the FP32 distance,
    so an INT8 file answering a distance would flag by another measure than the one calibrated."""
    import onnx
    from onnx.utils import Extractor

    onnx.save(Extractor(onnx.load(str(source))).extract_model([INPUT_NAME], [OUTPUT_NAME]), str(target))


def quantize_int8(
    source: Path, target: Path, calibration: np.ndarray, batch_size: int = 16, keep_float_ends: bool = True
) -> dict:
    """Static INT8 (QDQ, per-channel weights) of the classifier alone (`classifier_only`), calibrated
    on real training images.

    With `keep_float_ends`, the first convolution and the classifier stay FP32 (`float_ends`): they
    cost a small share of the compute and most of the accuracy loss. Returns the configuration used.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {INPUT_NAME: calibration[i : i + batch_size]} for i in range(0, len(calibration), batch_size)
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        classifier, prepared = Path(tmp) / "classifier.onnx", Path(tmp) / "prepared.onnx"
        classifier_only(source, classifier)
        quant_pre_process(str(classifier), str(prepared), skip_symbolic_shape=False)
        proto = onnx.load(str(prepared))
        name_nodes(proto)
        onnx.save(proto, str(prepared))
        excluded = float_ends(proto) if keep_float_ends else []
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
    return {"per_channel": True, "calibration_images": len(calibration), "fp32_nodes": excluded}
