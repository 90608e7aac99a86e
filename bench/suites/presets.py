"""Sweep presets: which cases ``run_bench.py`` measures.

Policies (documented in the README):

- **n_win** (BRA regions per side): 7 as in BiFormer while regions stay at most 8×8 tokens
  (resolution ≤ 56: 56² → 8×8, 28² → 4×4, 14² → 2×2 tokens per region); beyond that, regions of
  8×8 tokens, n_win = ceil(resolution / 8) (112² → 14, 224² → 28).
- **kv modes**: every pooled mode halves the side of a region's key/value map, keeping a quarter
  of its tokens: avgpool / maxpool with ratio 2, ada_avgpool / ada_maxpool with kv_per_win equal
  to half the region side.
- **window**: Swin's window 7 with the SW-MSA shift 3.
- **gpu-check**: the shapes of the fast-path figures only (BiFormer-T's three stage shapes, and
  112² / 224² with 8×8-token regions at topk 4), every BRA backend and dense full attention
  through SDPA's flash and memory-efficient kernels, sized to finish in minutes on one GPU; at the
  stage shapes also the reference BRA under ``torch.compile`` (default mode), the compiled baseline,
  and neighborhood attention (7×7, no bias table) through NATTEN's ``na2d`` beside this suite's backends.
- **compiled**: the BRA fast-path comparison with compiled baselines: every gpu-check BRA backend,
  eager and under ``torch.compile`` (default mode), at the headline CPU case (56², C 64, 2 heads,
  topk 4, batch 8) on the CPU and at BiFormer-T's stage shapes on a GPU, forward and fwd+bwd.
- **neighborhood**: NAT's 7×7 kernel with its relative position bias, the same without the bias (the
  configuration NATTEN's own ``na2d`` takes, so its backend has rows to compare), and DiNAT's dilated variant
  without the bias at the widest dilation a 7×7 kernel takes (resolution // 7: 4 at 28², 8 at 56²).
- **deformable**: DAT's sampled grid of about 14×14 points at any resolution (stride =
  resolution // 14, at least 1), an odd offset kernel at least as wide as the stride (at least 5,
  DAT's stage-3 kernel), and the bias table laid out for the input size.
"""

from __future__ import annotations

from typing import Any

from bench.core.profiles import GpuProfile
from bench.schema.columns import EAGER
from bench.suites.cases import Rule, SweepBlock

KV_MODES = ("identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool")


def _n_win(resolution: int, _: dict[str, Any]) -> int:
    return 7 if resolution <= 56 else -(-resolution // 8)


def _region_side(resolution: int, options: dict[str, Any]) -> int:
    return max(1, resolution // options.get("n_win", 7))


def _half_region(resolution: int, options: dict[str, Any]) -> int:
    return max(1, _region_side(resolution, options) // 2)


def _deformable_stride(resolution: int, _: dict[str, Any]) -> int:
    return max(1, resolution // 14)


def _deformable_kernel(resolution: int, options: dict[str, Any]) -> int:
    return max(5, 2 * (options["stride"] // 2) + 1)


def _dinat_dilation(resolution: int, options: dict[str, Any]) -> int:
    return max(1, resolution // options.get("kernel_size", 7))


N_WIN_RULE = Rule("7 up to 56², then regions of 8×8 tokens", _n_win)
HALF_REGION_RULE = Rule("half the region side", _half_region)

# Options every case of a family gets unless a block overrides them.
COMMON_OPTIONS: dict[str, dict[str, Any]] = {
    "window": {"window_size": 7, "shift_size": 3},
    "deformable": {"stride": Rule("resolution // 14", _deformable_stride),
                   "offset_kernel": Rule("odd, >= stride, >= 5", _deformable_kernel),
                   "fmap_size": Rule("the input size", lambda resolution, _: resolution)},
    "bra": {"n_win": N_WIN_RULE},
}


def kv_mode_bundle(mode: str) -> dict[str, Any]:
    """The kv_downsample options that go with a mode (see the module docstring)."""
    if mode in ("avgpool", "maxpool"):
        return {"kv_downsample_mode": mode, "kv_downsample_ratio": 2}
    if mode in ("ada_avgpool", "ada_maxpool"):
        return {"kv_downsample_mode": mode, "kv_per_win": HALF_REGION_RULE}
    return {"kv_downsample_mode": mode}


# NAT with its bias; the same without it, as NATTEN computes it; DiNAT's dilation, without it
DINAT_DILATION_RULE = Rule("resolution // kernel_size (DiNAT)", _dinat_dilation)
NEIGHBORHOOD_VARIANTS = [{"rel_pos_bias": True}, {"rel_pos_bias": False},
                         {"rel_pos_bias": False, "dilation": DINAT_DILATION_RULE}]


def topk_axis(values: list[int]) -> list[dict[str, Any]]:
    return [{"topk": k} for k in values]


def kv_axis(modes: list[str]) -> list[dict[str, Any]]:
    return [kv_mode_bundle(m) for m in modes]


# BiFormer-T's stage shapes at a 224² input: (resolution, dim, heads, topk of that stage).
BIFORMER_STAGES = [(56, 64, 2, 1), (28, 128, 4, 4), (14, 256, 8, 16)]
STAGE1_WIDTH = (64, 2)  # BiFormer's first stage; larger maps are stage 1 of larger inputs


# The gpu-check preset: BiFormer-T's stage shapes, then stage-1 width at 112² and 224² (8×8-token regions).
GPU_CHECK_SHAPES = [*BIFORMER_STAGES, (112, *STAGE1_WIDTH, 4), (224, *STAGE1_WIDTH, 4)]
GPU_CHECK_BACKENDS = {"bra": ["torch", "sdpa", "flex", "triton", "chunked"], "full": ["sdpa_flash", "sdpa_efficient"]}
# at BiFormer-T's stage shapes: NATTEN's na2d against ours, without the bias table NATTEN lacks
GPU_CHECK_NEIGHBORHOOD = ["torch", "sdpa", "flex", "natten"]
COMPILED_BASELINE = "default"  # the torch.compile mode of the compiled baselines the presets measure


def preset_blocks(preset: str, profile: GpuProfile) -> list[SweepBlock]:
    """The blocks of a preset, sized by the profile's defaults (batch, dtype, resolutions)."""
    batch, dtype = [profile.default_batch], [profile.default_dtype]
    dim, heads = STAGE1_WIDTH
    stages = [(r, d, h, {"topk": k}) for r, d, h, k in BIFORMER_STAGES]
    if preset == "gpu-check":  # shape by shape: a shape's cases are timed together, and a time budget cuts shapes
        blocks = []
        for r, d, h, k in GPU_CHECK_SHAPES:
            shape = [(r, d, h, {"topk": k})]
            blocks += [SweepBlock(f"gpu-check {r}² {family}", shape, families=[family], backends=backends,
                                  batches=batch, dtypes=dtype) for family, backends in GPU_CHECK_BACKENDS.items()]
            if (r, d, h, k) in BIFORMER_STAGES:
                blocks.append(SweepBlock(f"gpu-check {r}² neighborhood", shape,
                                         {"variant": [{"rel_pos_bias": False}]}, families=["neighborhood"],
                                         backends=GPU_CHECK_NEIGHBORHOOD, batches=batch, dtypes=dtype))
                blocks.append(SweepBlock(f"gpu-check {r}² bra compiled", shape, families=["bra"], backends=["torch"],
                                         backends_fixed=True, batches=batch, dtypes=dtype,
                                         compile_modes=[COMPILED_BASELINE]))
        return blocks
    if preset == "compiled":
        shapes = [(56, dim, heads, {"topk": 4})] if profile.name == "cpu" else stages
        return [SweepBlock("compiled", shapes, families=["bra"], backends=GPU_CHECK_BACKENDS["bra"], batches=batch,
                           dtypes=dtype, compile_modes=[EAGER, COMPILED_BASELINE])]
    if preset == "quick":
        shapes = [(28, dim, heads, {})]
        return [
            SweepBlock("families", shapes, {"kv": kv_axis(list(KV_MODES)), "variant": NEIGHBORHOOD_VARIANTS},
                       batches=[2], dtypes=["float32"]),
            SweepBlock("topk", shapes, {"topk": topk_axis([1, 16])}, families=["bra"], batches=[2],
                       dtypes=["float32"], phases=["fwd"]),
        ]
    resolutions = list(profile.default_resolutions) if preset == "default" else [28, 56, 112, 224]
    topks = [1, 4, 16] if preset == "default" else [1, 2, 4, 8, 16, 32]
    shapes = [(r, dim, heads, {}) for r in resolutions]
    blocks = [
        SweepBlock("resolution", shapes, {"topk": topk_axis(topks), "variant": NEIGHBORHOOD_VARIANTS}, batches=batch,
                   dtypes=dtype),
        SweepBlock("kv_modes", shapes, {"kv": kv_axis(list(KV_MODES))}, families=["bra"], batches=batch,
                   dtypes=dtype),
        SweepBlock("stages", stages, batches=batch, dtypes=dtype),
    ]
    if preset == "full":
        blocks.append(SweepBlock("batch", shapes[:2], batches=[1, 8, 2 * profile.default_batch], dtypes=dtype))
    return blocks


PRESETS = ("quick", "default", "full", "gpu-check", "compiled")
