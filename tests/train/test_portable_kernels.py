"""`train.reproducible: portable`: convolutions without oneDNN give what nn.Conv2d gives (up to summation
order), for every kind of convolution the backbones use, and a portable training reaches no oneDNN kernel."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from transferline.model.portable_kernels import PortableConv2d, make_portable, set_portable_kernels

PROJECT_ROOT = Path(__file__).resolve().parents[2]

CONVS = {
    "pointwise": dict(in_channels=16, out_channels=24, kernel_size=1),
    "pointwise with bias": dict(in_channels=16, out_channels=8, kernel_size=1, bias=True),
    "depthwise 3x3": dict(in_channels=16, out_channels=16, kernel_size=3, padding=1, groups=16),
    "depthwise 3x3 stride 2": dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, padding=1, groups=16),
    "depthwise 5x5 stride 2": dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, padding=2, groups=8),
    "stem 3x3 stride 2": dict(in_channels=3, out_channels=16, kernel_size=3, stride=2, padding=1),
    "inception 1x7": dict(in_channels=8, out_channels=12, kernel_size=(1, 7), padding=(0, 3)),
    "grouped": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, groups=4),
    "dilated": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
}


@pytest.mark.parametrize("kind", list(CONVS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_portable_convolution_matches_conv2d_forward_and_backward(kind, channels_last):
    torch.manual_seed(0)
    options = {"bias": False, **CONVS[kind]}
    reference = nn.Conv2d(**options)
    portable = make_portable(copy.deepcopy(reference))
    assert type(portable) is PortableConv2d and portable.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, options["in_channels"], 15, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref, x_port = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = reference(x_ref), portable(x_port)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x_port.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(portable.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)


def test_portable_switch_builds_portable_models_and_turns_onednn_off():
    from transferline.model.backbones import build_model

    try:
        set_portable_kernels(True)
        assert not torch.backends.mkldnn.enabled
        model, _ = build_model("mobilenet_v2", 3, pretrained=False)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(type(m) is PortableConv2d for m in convs)
    finally:
        set_portable_kernels(False)
    assert torch.backends.mkldnn.enabled
    model, _ = build_model("mobilenet_v2", 3, pretrained=False)
    assert not any(type(m) is PortableConv2d for m in model.modules())


@pytest.mark.slow
def test_a_portable_training_runs_no_onednn_kernel(prepared: Path, tmp_path: Path):
    """ONEDNN_VERBOSE lists every oneDNN primitive a process executes: none in portable mode, many without."""

    def onednn_lines(reproducible: str) -> int:
        code = (
            "import sys; from pathlib import Path; from stages import train; "
            "from tests.train.conftest import make_tiny_params; "
            f"p = make_tiny_params(reproducible={reproducible}, epochs=1, warmup_epochs=0.2); "
            "out = Path(sys.argv[2]); "
            "train.run(p, prepared_dir=Path(sys.argv[1]), models_dir=out / 'models', "
            "features_dir=out / 'features', checkpoint_dir=out / 'ckpt', metrics_file=out / 'm.json', live_dir=None)"
        )
        env = {**os.environ, "ONEDNN_VERBOSE": "1", "PYTHONPATH": str(PROJECT_ROOT)}
        out = tmp_path / reproducible.strip("'\"")
        result = subprocess.run(
            [sys.executable, "-c", code, str(prepared), str(out)],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / "models" / "model.pt").is_file()
        return sum(1 for line in result.stdout.splitlines() if line.startswith("onednn_verbose") and ",exec," in line)

    assert onednn_lines("True") > 0  # the check can see oneDNN at work
    assert onednn_lines("'portable'") == 0
