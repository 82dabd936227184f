"""Element-wise maths whose bytes do not depend on the CPU vendor.

On CPU, torch sends float `sqrt` (and `acos`, `atan`) to MKL's vector-math library, whose results are
within an ulp but not correctly rounded, and differ between an AMD EPYC and an Intel CPU running the
same binary with the same pinned code paths: they rest on approximate-reciprocal instructions, which
each vendor implements its own way (bench/repro_fingerprint.py --emulate finds them; its report is
bench/results/repro_ops.md). NumPy's `sqrt` is the IEEE instruction, correctly rounded everywhere.
The training path calls these instead wherever a CPU tensor is concerned; on a GPU torch's own are exact.
"""

from __future__ import annotations

import numpy as np
import torch


def sqrt(values: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root (no autograd: for parameters of the recipe, not for the model's graph)."""
    if values.device.type != "cpu":
        return torch.sqrt(values)
    array = values.detach().contiguous().numpy()
    return torch.from_numpy(np.sqrt(array))
