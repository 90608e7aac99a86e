"""What every process timing a sweep's cases must share with the sweep: its numerics, its intra-op threads
and the modules that registered extra families or backends.

- **Numerics** (``Numerics``) are set by the harness, never inherited from whatever ran before: TF32
  for matmuls and for cuDNN (whose default lets fp32 convolutions run in TF32), the fp32 matmul
  precision that goes with it, ``cudnn.benchmark``, and the deterministic-algorithm flags. A run
  records them, and ``pct_of_peak`` divides by the peak of the math actually used (the TF32 peak for
  float32 when TF32 is on).
- **Processes.** Later sittings run in spawned processes and Ray runs groups in its workers; each
  applies the sweep's ``ProcessSettings`` before it builds anything, and a sitting reports what it
  ended up with, so that the sweep can refuse timings taken under other settings.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass

import torch

import attentions

# cuBLAS needs a fixed workspace for deterministic results (PyTorch's reproducibility notes)
DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class Numerics:
    """The math modes a sweep runs under. The defaults are exact fp32 (no TF32 anywhere), cuDNN's
    heuristics (no benchmark autotuning) and non-deterministic algorithms: PyTorch's defaults but for
    cuDNN's TF32."""

    tf32_matmul: bool = False
    tf32_cudnn: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = False

    @property
    def float32_matmul_precision(self) -> str:
        return "high" if self.tf32_matmul else "highest"

    def apply(self) -> None:
        """Set these modes in this process."""
        torch.set_float32_matmul_precision(self.float32_matmul_precision)
        torch.backends.cuda.matmul.allow_tf32 = self.tf32_matmul
        torch.backends.cudnn.allow_tf32 = self.tf32_cudnn
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.deterministic
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", DETERMINISTIC_CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(self.deterministic)

    @classmethod
    def current(cls) -> Numerics:
        """The modes this process runs under now."""
        return cls(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   deterministic=torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic)

    def as_dict(self) -> dict[str, object]:
        """The modes as a run's metadata records them."""
        return {**asdict(self), "float32_matmul_precision": self.float32_matmul_precision}


@dataclass(frozen=True)
class ProcessSettings:
    """Numerics, intra-op threads (None: as the process has them) and extension modules to import."""

    numerics: Numerics
    threads: int | None
    extension_modules: tuple[str, ...]

    def apply(self) -> None:
        """Import the extension modules (they register their families and backends), then set threads and
        numerics. ImportError names the module when one cannot be imported here."""
        for name in self.extension_modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ImportError(f"cannot import {name!r}, which registered attention families or backends in "
                                  f"the sweep's process: {exc}") from exc
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.numerics.apply()

    def differences(self) -> list[str]:
        """How this process differs from these settings ('threads 2, not 1', ...); empty when it does not."""
        found = []
        if self.threads is not None and torch.get_num_threads() != self.threads:
            found.append(f"threads {torch.get_num_threads()}, not {self.threads}")
        now = Numerics.current()
        for field, wanted in asdict(self.numerics).items():
            if getattr(now, field) != wanted:
                found.append(f"{field} {getattr(now, field)}, not {wanted}")
        extensions = set(attentions.extension_modules())
        found += [f"no family or backend of {name} registered (the sweep's process has some)"
                  for name in self.extension_modules if name not in extensions]
        return found
