"""INT8 export: the first convolution and the classifier stay FP32 when asked, every other layer is quantized."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.model_fixtures import TinyConvNet
from transferline.evaluation.onnx_export import (
    cpu_session,
    export_onnx,
    optimize_onnx,
    quantize_int8,
    run_batches,
)

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("int8")
    export_onnx(TinyConvNet(3).eval(), IMAGE_SIZE, tmp / "raw.onnx")
    optimize_onnx(tmp / "raw.onnx", tmp / "model.onnx")
    return tmp / "model.onnx"


def quantized_weight_layers(path) -> dict[str, bool]:
    """For every Conv/Gemm/MatMul, in graph order: is its weight fed through DequantizeLinear (INT8)?"""
    graph = onnx.load(str(path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    return {
        node.name: node.input[1] in dequantized for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")
    }


def calibration(count: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def test_float_ends_keep_the_first_conv_and_the_classifier_in_fp32(fp32_model, tmp_path):
    config = quantize_int8(fp32_model, tmp_path / "int8.onnx", calibration(), keep_float_ends=True)
    layers = quantized_weight_layers(tmp_path / "int8.onnx")
    assert len(layers) == 3 and len(config["fp32_nodes"]) == 2
    names = list(layers)
    assert [layers[name] for name in names] == [False, True, False]
    assert set(config["fp32_nodes"]) == {names[0], names[-1]}
    assert config["per_channel"] is True and config["calibration_images"] == 16
    logits = run_batches(cpu_session(tmp_path / "int8.onnx"), calibration(4), 4)
    assert logits.shape == (4, 3) and np.isfinite(logits).all()


def test_without_float_ends_every_weight_layer_is_quantized(fp32_model, tmp_path):
    config = quantize_int8(fp32_model, tmp_path / "int8.onnx", calibration(), keep_float_ends=False)
    assert config["fp32_nodes"] == []
    assert all(quantized_weight_layers(tmp_path / "int8.onnx").values())
