"""A GPU's clocks watched while its passes are timed: a row timed while the SM clock fell or the GPU
throttled (power cap, thermal or hardware slowdown) is noise, not a finding.

``ClockWatch`` samples the SM clock, temperature, power draw and NVML's clock-event ("throttle")
reasons between timed rounds (at most every ``SAMPLE_EVERY_S``). Its ``verdict`` names what went
wrong: the SM clock falling more than ``CLOCK_DROP`` below its highest sample, or any of
``THROTTLE_REASONS``. Idle, application-clock and sync-boost reasons are not slowdowns and are not
counted. NVML comes from the ``pynvml`` module (the ``nvidia-ml-py`` package, in the ``gpu`` extra);
without it the clocks are not watched, and the rows say nothing of them.
"""

from __future__ import annotations

import time
from typing import Any

import torch

SAMPLE_EVERY_S = 0.01
CLOCK_DROP = 0.05  # an SM clock more than 5% below its highest sample during the timing
# NVML's clock event reason bits that slow the GPU down (nvmlClocksEventReason*, formerly ThrottleReasons)
THROTTLE_REASONS = {
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
NVML_CLOCK_SM = 1  # NVML_CLOCK_SM
NVML_TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU


def load_nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None when it is not installed or NVML does not start."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML here: the clocks go unwatched
        return None
    return pynvml


def nvml_index(device: torch.device) -> int:
    """NVML's index of a CUDA device (they differ under CUDA_VISIBLE_DEVICES)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return torch.cuda._get_nvml_device_index(index)
    except Exception:  # noqa: BLE001 - an older torch: the visible index
        return index


class ClockWatch:
    """Samples of one GPU's clocks during a timing, and what they say about it."""

    def __init__(self, nvml: Any, index: int) -> None:
        self.nvml = nvml
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        self._reasons = reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        self.clocks_mhz: list[float] = []
        self.temperatures_c: list[float] = []
        self.powers_w: list[float] = []
        self.reason_bits = 0
        self._last = -float("inf")

    @classmethod
    def for_device(cls, device: torch.device, nvml: Any | None = None) -> ClockWatch | None:
        """A watch of ``device`` when it is a GPU that NVML can read (``nvml``: the module to use instead of
        ``pynvml``, for a stand-in); None otherwise."""
        if device.type != "cuda":
            return None
        nvml = nvml or load_nvml()
        if nvml is None:
            return None
        try:
            return cls(nvml, nvml_index(device))
        except Exception:  # noqa: BLE001 - NVML refuses this device: unwatched
            return None

    def sample(self, force: bool = False) -> None:
        """Read the clocks, unless the last reading is under ``SAMPLE_EVERY_S`` old (``force`` reads anyway)."""
        now = time.perf_counter()
        if not force and now - self._last < SAMPLE_EVERY_S:
            return
        self._last = now
        try:
            self.clocks_mhz.append(float(self.nvml.nvmlDeviceGetClockInfo(self.handle, NVML_CLOCK_SM)))
            self.temperatures_c.append(float(self.nvml.nvmlDeviceGetTemperature(self.handle, NVML_TEMPERATURE_GPU)))
            self.powers_w.append(self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3)
            self.reason_bits |= int(self._reasons(self.handle))
        except Exception:  # noqa: BLE001 - a reading NVML refuses is simply missing
            pass

    @property
    def throttles(self) -> list[str]:
        return [name for bit, name in THROTTLE_REASONS.items() if self.reason_bits & bit]

    def verdict(self) -> str | None:
        """Why the timing is noise (the clock fell, the GPU throttled), or None when it is not."""
        reasons = []
        if self.clocks_mhz and min(self.clocks_mhz) < (1 - CLOCK_DROP) * max(self.clocks_mhz):
            reasons.append(f"SM clock fell to {min(self.clocks_mhz):.0f} MHz from {max(self.clocks_mhz):.0f} MHz")
        if self.throttles:
            reasons.append(f"GPU throttled ({', '.join(self.throttles)})")
        return "; ".join(reasons) + " during timing" if reasons else None

    def summary(self) -> dict[str, Any]:
        """The samples' range, for a row's gpu_state."""
        def span(values: list[float]) -> list[float] | None:
            return [min(values), max(values)] if values else None
        return {"samples": len(self.clocks_mhz), "sm_clock_mhz": span(self.clocks_mhz),
                "temperature_c": span(self.temperatures_c), "power_w": span(self.powers_w),
                "throttle_reasons": self.throttles}
