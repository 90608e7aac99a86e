"""Machine facts a run records: the CPU's name, this process's math modes, and the environment (hardware,
software versions, the suite's commit) that produced a run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bench.core.compilation import cpp_compiler_version


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def natten_version() -> str | None:
    """NATTEN's version, and whether it has its compiled library (its fused kernels) or is pure Python (its Flex
    backend only): read from the installed files, without importing it."""
    version = _version("natten")
    if version is None:
        return None
    files = importlib.metadata.files("natten") or []
    fused = any(Path(str(name)).name.startswith("libnatten") for name in files)
    return f"{version} ({'with libnatten' if fused else 'pure Python: Flex backend only'})"


def _command_output(*args: str, cwd: Path | None = None) -> str | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numerics_now() -> dict[str, Any]:
    """This process's math modes now (see ``bench.core.settings.Numerics``), as a run's environment records them."""
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def environment() -> dict[str, Any]:
    """What produced a run: hardware, software versions and the suite's commit."""
    repo = Path(__file__).resolve().parent.parent
    commit = _command_output("git", "rev-parse", "HEAD", cwd=repo)
    dirty = _command_output("git", "status", "--porcelain", "--untracked-files=no", cwd=repo)
    cuda = torch.cuda.is_available()
    return {
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": _command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "xformers": _version("xformers"),
        "natten": natten_version(),
        "fvcore": _version("fvcore"),
        "cpp_compiler": cpp_compiler_version(),  # what CPU Inductor builds with (torch.compile's version is torch's)
        **numerics_now(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "suite_commit": commit,
        "suite_dirty": bool(dirty),
    }
