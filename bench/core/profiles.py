"""GPU profiles: vendor peak figures (dense, from datasheets) and sensible sweep defaults.

Peaks are in TFLOP/s of hardware FLOPs (2 per multiply-add). ``float32`` is the plain fp32
rate: PyTorch does not use TF32 for matmuls unless ``torch.backends.cuda.matmul.allow_tf32`` is
set, and the harness records that flag. The CPU profile has no peak figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GpuProfile:
    name: str
    marketing_name: str
    peak_tflops: dict[str, float]  # by dtype name: float16, bfloat16, tf32, float32
    memory_bandwidth_tbs: float | None
    memory_gb: float | None
    default_dtype: str
    default_batch: int
    default_resolutions: tuple[int, ...] = field(default=(56, 112, 224))

    def peak_for(self, dtype: str, tf32: bool = False) -> float | None:
        """Peak TFLOP/s for a dtype name, or None when the profile has no figure for it."""
        if dtype == "float32" and tf32:
            return self.peak_tflops.get("tf32")
        return self.peak_tflops.get(dtype)


def _tensor_core(half: float, tf32: float | None, fp32: float) -> dict[str, float]:
    peaks = {"float16": half, "bfloat16": half, "float32": fp32}
    if tf32 is not None:
        peaks["tf32"] = tf32
    return peaks


PROFILES: dict[str, GpuProfile] = {
    "a100": GpuProfile("a100", "NVIDIA A100 SXM 80GB", _tensor_core(312, 156, 19.5), 2.04, 80, "bfloat16", 64),
    "h100": GpuProfile("h100", "NVIDIA H100 SXM", _tensor_core(989, 495, 67), 3.35, 80, "bfloat16", 64),
    "h200": GpuProfile("h200", "NVIDIA H200", _tensor_core(989, 495, 67), 4.8, 141, "bfloat16", 64),
    "l4": GpuProfile("l4", "NVIDIA L4", _tensor_core(121, 60, 30), 0.3, 24, "bfloat16", 16),
    "rtx4090": GpuProfile("rtx4090", "NVIDIA GeForce RTX 4090", _tensor_core(165, 83, 83), 1.0, 24, "bfloat16", 16),
    "v100": GpuProfile("v100", "NVIDIA V100 SXM", {"float16": 125, "float32": 15.7}, 0.9, 32, "float16", 32),
    "cpu": GpuProfile("cpu", "CPU", {}, None, None, "float32", 8, (28, 56)),
}

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
}
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32",
                 "fp64": "float64", "double": "float64"}


def canonical_dtype(name: str) -> str:
    """'bf16' -> 'bfloat16' etc.; raises ValueError naming the valid names."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})")
    return name
