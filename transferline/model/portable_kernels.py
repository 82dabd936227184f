"""`train.reproducible: portable`: convolutions computed without oneDNN, whose blocking depends on the CPU.

With the instruction set, MKL branch and thread count pinned (`reproducible: true`), two CPUs of one kind
give the same model, but an AMD EPYC and an Intel Xeon did not (bench/results/repro.md): oneDNN's
convolution kernels size their blocking, and with it the order in which a reduction over input
channels is summed, from the CPU's cache sizes, which no setting pins. Portable mode takes oneDNN out:
every `nn.Conv2d` becomes a `PortableConv2d` (a subclass: same parameters, same state-dict keys, the
same module everywhere else) whose forward pass is made of operations whose summation order is fixed:

- a matrix product (pointwise and general convolutions, through im2col): MKL's GEMM, whose results
  MKL's conditional numerical reproducibility (`MKL_CBWR=COMPATIBLE`, pinned) makes the same on every
  x86-64 CPU for a fixed thread count;
- for depthwise convolutions, one multiply-add per kernel tap in a fixed order: ATen's element-wise
  kernels at the pinned ATen capability.

Backward passes are autograd's derivatives of the same operations. `torch.backends.mkldnn` is switched
off, so no other layer reaches oneDNN either (batch norm, pooling and linear layers have ATen or MKL
paths). The cost is speed, measured in bench/results/repro.md; the numbers differ from oneDNN's only
by summation order (tests/train/test_portable_kernels.py). Used for training and feature extraction;
export and serving load the same state dict into the ordinary model.

Measured, it is not enough on its own: the same short default training in portable mode gave different
bytes on an AMD EPYC and an Intel Xeon (bench/results/repro.md), so some other computation of a training
step still depends on the CPU. bench/repro_fingerprint.py hashes every piece of one training step per CPU
and mode; the first piece whose digest differs between two CPUs is the one left to pin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_active = False


def set_portable_kernels(active: bool) -> None:
    """Process-wide: models built from now on use portable convolutions; oneDNN off while active."""
    global _active
    _active = active
    torch.backends.mkldnn.enabled = not active


def portable_kernels_active() -> bool:
    return _active


class PortableConv2d(nn.Conv2d):
    """nn.Conv2d computed with GEMMs and element-wise ops only (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise NotImplementedError("portable kernels support numeric zero padding only")
        kh, kw = self.kernel_size
        if self.groups == 1 and (kh, kw) == (1, 1) and self.padding == (0, 0):
            return self._pointwise(x)
        if self.groups == self.in_channels == self.out_channels:
            return self._depthwise(x)
        return self._im2col(x)

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """(N·H·W, C_in) @ (C_in, C_out) on the channels-last view: one GEMM."""
        x = x[:, :, :: self.stride[0], :: self.stride[1]]
        n, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).reshape(-1, c) @ self.weight.reshape(self.out_channels, c).t()
        if self.bias is not None:
            y = y + self.bias
        return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over kernel taps, in a fixed order, of a strided window times that tap's per-channel weight."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        _, c, h, w = x.shape
        ho, wo = self._out_size(h, w)
        padded = F.pad(x, (pw, pw, ph, ph))
        out = None
        for i in range(kh):
            for j in range(kw):
                top, left = i * dh, j * dw
                window = padded[:, :, top : top + (ho - 1) * sh + 1 : sh, left : left + (wo - 1) * sw + 1 : sw]
                term = window * self.weight[:, 0, i, j].view(1, c, 1, 1)
                out = term if out is None else out + term
        if self.bias is not None:
            out = out + self.bias.view(1, c, 1, 1)
        return out

    def _im2col(self, x: torch.Tensor) -> torch.Tensor:
        """Unfold the input into columns, then one (batched, per group) GEMM with the weights."""
        n, _, h, w = x.shape
        ho, wo = self._out_size(h, w)
        g = self.groups
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.view(n, g, -1, ho * wo)  # (N, G, C_in/G·kh·kw, L)
        weight = self.weight.reshape(g, self.out_channels // g, -1)  # (G, C_out/G, C_in/G·kh·kw)
        y = (weight.unsqueeze(0) @ cols).reshape(n, self.out_channels, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


def make_portable(model: nn.Module) -> nn.Module:
    """Swap every plain nn.Conv2d of `model` for a PortableConv2d holding the same parameters, in place."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = PortableConv2d  # the same object, parameters and hooks: only forward changes
    return model
