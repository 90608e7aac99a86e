"""Whole backbones for model-level tables: BiFormer-T/S/B, and a Swin-T-layout backbone whose
attention is chosen per stage from the registry.

Both layouts are four stages of pre-norm blocks on NCHW images (NHWC inside a stage), with
BatchNorm before global average pooling and a linear classifier:

- **BiFormer** (Zhu et al., CVPR 2023; ``biformer_tiny/small/base``): an overlapping stem of two
  3×3 stride-2 convs, a 3×3 stride-2 conv between stages, and blocks of a 3×3 depthwise-conv
  positional embedding (residual), LN, attention, LN, MLP (ratio 3). BiFormer's attention is BRA
  with n_win 7, LePE 5×5 and topk 1, 4, 16 per stage, and in the last stage topk -2: full
  attention with LePE. Parameter names follow the authors' checkpoints.
- **Swin-T layout** (``swin_layout``, the BiFormer paper's BiFormer-STL ablation): depths 2-2-6-2,
  widths 96-768, a 4×4 patchify stem, 2×2 patch merging, blocks of LN, attention, LN, MLP (ratio 4).
  With ``attention="bra"`` it is BiFormer-STL, names included.

Heads are width / 32 everywhere except where BiFormer's topk -1 / -2 builds full attention: the
authors build it with that class's default of 8 heads, and so does this module.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .core import conv_nhwc
from .errors import AttentionConfigError
from .registry import AttentionModule, build, check_flag, check_matches_parameters, family_options, list_attentions

STAGES = 4
HEAD_DIM = 32
BIFORMER_TOPKS = (1, 4, 16, -2)
BIFORMER_FULL_HEADS = 8  # heads of BiFormer's topk -1 / -2 attention (its class default)
FULL_ATTENTION_TOPKS = (-1, -2)  # BiFormer's bra topk for full attention without / with LePE
IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class Layout:
    """The fixed architecture behind a model name."""

    display_name: str
    style: str  # "biformer" or "swin": stem, downsampling, block and parameter names
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    mlp_ratio: int

    @property
    def input_multiple(self) -> int:
        """What H and W must divide by: Swin's patchify and merging convs would drop border pixels."""
        return 32 if self.style == "swin" else 1


LAYOUTS: dict[str, Layout] = {
    "biformer_tiny": Layout("BiFormer-T", "biformer", (2, 2, 8, 2), (64, 128, 256, 512), 3),
    "biformer_small": Layout("BiFormer-S", "biformer", (4, 4, 18, 4), (64, 128, 256, 512), 3),
    "biformer_base": Layout("BiFormer-B", "biformer", (4, 4, 18, 4), (96, 192, 384, 768), 3),
    "swin_layout": Layout("Swin-T layout", "swin", (2, 2, 6, 2), (96, 192, 384, 768), 4),
}

# Options of every model, with their defaults (see ``build_model``).
MODEL_OPTIONS: dict[str, Any] = {
    "attention": "bra", "attention_options": None, "backend": "torch", "auto_pad": False, "num_classes": 1000,
    "drop_path_rate": 0.0,
}


def default_stage_options(family: str, stage: int) -> dict[str, Any]:
    """A family's options in stage ``stage`` (0-3) unless the caller overrides them.

    bra: BiFormer's (n_win 7, LePE 5, topk 1/4/16/-2). window: Swin's window 7 (every second block
    shifted by 3). deformable: DAT++'s all-stage layout, about 7×7 sampled points per map at 224²
    (stride 8/4/2/1, offset kernel 9/7/5/3, 1/2/4/8 groups, bias table for the 224² map).
    full: the family's defaults.
    """
    if family == "bra":
        return {"n_win": 7, "topk": BIFORMER_TOPKS[stage], "side_dwconv": 5}
    if family == "window":
        return {"window_size": 7}
    if family == "deformable":
        return {"stride": 8 >> stage, "offset_kernel": 9 - 2 * stage, "n_groups": 1 << stage, "fmap_size": 56 >> stage}
    return {}


def block_options(family: str, options: dict[str, Any], index: int) -> dict[str, Any]:
    """Options of the ``index``-th block of a stage: Swin alternates W-MSA and SW-MSA.

    For window attention ``shift_size`` is the shift of every second block (default window // 2;
    0 leaves every block unshifted).
    """
    if family != "window":
        return options
    shift = options.get("shift_size", options.get("window_size", 7) // 2)
    return {**options, "shift_size": shift if index % 2 else 0}


def stage_attention(family: str, dim: int, options: dict[str, Any], backend: str) -> AttentionModule:
    """The attention of one block; BiFormer's bra topk -1 / -2 is full attention (without / with LePE)."""
    if family == "bra" and options.get("topk") in FULL_ATTENTION_TOPKS:
        unknown = sorted(set(options) - set(family_options("bra")))
        if unknown:
            raise AttentionConfigError(f"unknown option(s) {', '.join(unknown)} for 'bra'; "
                                       f"valid: {', '.join(family_options('bra'))}")
        lepe = options.get("side_dwconv", family_options("bra")["side_dwconv"]) if options["topk"] == -2 else 0
        return build("full", dim=dim, num_heads=BIFORMER_FULL_HEADS, backend=backend, qkv_bias=False,
                     side_dwconv=lepe)
    return build(family, dim=dim, num_heads=dim // HEAD_DIM, backend=backend, **options)


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's residual branch with probability ``rate``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def mlp(dim: int, ratio: int, out_index: int) -> nn.Sequential:
    """Linear -> GELU -> Linear, the second Linear at index ``out_index`` of the state_dict.

    BiFormer keeps index 1 for an optional depthwise conv (off in every published model), so its
    Linears are ``mlp.0`` and ``mlp.3``; BiFormer-STL's are ``mlp.0`` and ``mlp.2``.
    """
    hidden = ratio * dim
    return nn.Sequential(OrderedDict([
        ("0", nn.Linear(dim, hidden)), (str(out_index - 1), nn.GELU()), (str(out_index), nn.Linear(hidden, dim))]))


class Block(nn.Module):
    """Pre-norm transformer block on NHWC maps, with BiFormer's optional conv positional embedding."""

    def __init__(self, dim: int, attn: AttentionModule, mlp_ratio: int, pos_embed: bool, mlp_out_index: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if pos_embed else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio, mlp_out_index)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.pos_embed is not None:
            x = x + conv_nhwc(self.pos_embed, x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Sequential):
    """A stage's blocks: NCHW in and out, like the convolutions around it; NHWC inside."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self:
            x = block(x)
        return x.permute(0, 3, 1, 2)


def biformer_downsampling(dims: Sequence[int]) -> nn.ModuleList:
    """BiFormer's overlapping stem (3×3/2 conv, BN, GELU, 3×3/2 conv, BN) and 3×3/2 conv + BN merges."""
    half = dims[0] // 2
    stem = nn.Sequential(nn.Conv2d(IMAGE_CHANNELS, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
                         nn.Conv2d(half, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
    merges = [nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b)) for a, b in zip(dims, dims[1:])]
    return nn.ModuleList([stem, *merges])


def swin_downsampling(dims: Sequence[int]) -> nn.ModuleList:
    """Swin-T's 4×4/4 patchify stem (conv, BN) and BN + 2×2/2 conv patch merging, as BiFormer-STL."""
    stem = nn.Sequential(nn.Conv2d(IMAGE_CHANNELS, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))
    merges = [nn.Sequential(nn.BatchNorm2d(a), nn.Conv2d(a, b, 2, 2)) for a, b in zip(dims, dims[1:])]
    return nn.ModuleList([stem, *merges])


def per_stage(name: str, value: Any, kind: type | tuple[type, ...], what: str) -> list[Any]:
    """``value`` for every stage: one value (of type ``kind``) for all, or a list of one per stage."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * STAGES
    if len(values) != STAGES:
        raise AttentionConfigError(f"{name} must be one value or a list of {STAGES} (one per stage), "
                                   f"got {len(values)}: {value!r}")
    for stage, item in enumerate(values):
        if not isinstance(item, kind):
            raise AttentionConfigError(f"{name} of stage {stage} must be {what}, got {item!r}")
    return values


class Backbone(nn.Module):
    """A four-stage hierarchical backbone with a classifier; NCHW images in, logits out.

    Build it with ``build_model``. ``forward_features`` gives the normalised last feature map.
    """

    def __init__(self, layout: Layout, *, attention: str | Sequence[str], attention_options: Any,
                 backend: str, auto_pad: bool, num_classes: int, drop_path_rate: float) -> None:
        super().__init__()
        families = per_stage("attention", attention, str, "an attention name")
        known = list(list_attentions())
        for stage, family in enumerate(families):
            if family not in known:
                raise AttentionConfigError(f"unknown attention {family!r} for stage {stage}; "
                                           f"valid: {', '.join(map(repr, known))}")
        overrides = per_stage("attention_options", attention_options, (dict, type(None)), "a dict or None")
        check_flag("auto_pad", auto_pad)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise AttentionConfigError(f"num_classes must be an integer >= 0 (0: no head), got {num_classes!r}")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0 <= drop_path_rate < 1:
            raise AttentionConfigError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")

        self.layout = layout
        self.attention = tuple(families)
        dims = layout.dims
        self.downsample_layers = biformer_downsampling(dims) if layout.style == "biformer" else swin_downsampling(dims)
        # on the CPU whatever the default device, so that a model can be built on the meta device too
        rates = torch.linspace(0, drop_path_rate, sum(layout.depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for stage, (family, extra) in enumerate(zip(families, overrides)):
            options = {**default_stage_options(family, stage), **(extra or {})}
            if "auto_pad" in family_options(family) and "auto_pad" not in options:
                options["auto_pad"] = auto_pad
            first = sum(layout.depths[:stage])
            blocks = [self._block(stage, family, block_options(family, options, index), backend, rates[first + index])
                      for index in range(layout.depths[stage])]
            self.stages.append(Stage(*blocks) if layout.style == "biformer"
                               else nn.Sequential(OrderedDict(blocks=Stage(*blocks))))
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()
        self.apply(init_weights)

    def _block(self, stage: int, family: str, options: dict[str, Any], backend: str, drop_path: float) -> Block:
        dim = self.layout.dims[stage]
        try:
            attn = stage_attention(family, dim, options, backend)
        except AttentionConfigError as exc:
            raise AttentionConfigError(f"stage {stage} ({family}, width {dim}): {exc}") from None
        biformer = self.layout.style == "biformer"
        return Block(dim, attn, self.layout.mlp_ratio, pos_embed=biformer, mlp_out_index=3 if biformer else 2,
                     drop_path=drop_path)

    def attention_modules(self) -> list[AttentionModule]:
        return [m for m in self.modules() if isinstance(m, AttentionModule)]

    @property
    def backend(self) -> str:
        """The attention backend of every block ('mixed' if set apart); assignable on a live model."""
        names = {m.backend for m in self.attention_modules()}
        return names.pop() if len(names) == 1 else "mixed"

    @backend.setter
    def backend(self, name: str) -> None:
        """All or nothing: unless every block's attention has backend ``name``, no block switches."""
        staged = [(stage, m) for stage, blocks in enumerate(self.stages) for m in blocks.modules()
                  if isinstance(m, AttentionModule)]
        common = [b for b in staged[0][1].backends if all(b in m.backends for _, m in staged)]
        if name not in common:
            lacking = dict.fromkeys(f"stage {stage} ({m.family})" for stage, m in staged
                                    if name not in tuple(m.backends))
            raise AttentionConfigError(
                f"backend {name!r} is missing from {', '.join(lacking)}; every stage has "
                f"{', '.join(map(repr, common))}; no block was switched")
        for _, module in staged:
            module.backend = name

    def check_image(self, x: Tensor) -> None:
        """Raise ``AttentionConfigError`` unless x is a floating (B, 3, H, W) batch this layout takes, on the
        parameters' device and in their dtype."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != IMAGE_CHANNELS or not x.is_floating_point():
            shape = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise AttentionConfigError(f"expected a floating NCHW image batch (B, {IMAGE_CHANNELS}, H, W), "
                                       f"got {shape}")
        multiple = self.layout.input_multiple
        height, width = x.shape[-2:]
        if min(x.shape) < 1 or height % multiple or width % multiple:
            raise AttentionConfigError(f"{self.layout.display_name} needs H and W that are positive multiples of "
                                       f"{multiple}, got {height}×{width}")
        check_matches_parameters(self, x, "the image batch")

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> the normalised last feature map, (B, C, H/32, W/32) rounded up."""
        self.check_image(x)
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x).mean((2, 3)))

    def extra_repr(self) -> str:
        return f"{self.layout.display_name}, attention={list(self.attention)}"


def init_weights(module: nn.Module) -> None:
    """The usual ViT initialisation, as the authors apply it: Linear weights N(0, 0.02) truncated, zero
    biases; LayerNorm to identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _layout(name: str) -> Layout:
    if not isinstance(name, str) or name not in LAYOUTS:
        raise AttentionConfigError(f"unknown model {name!r}; valid: {', '.join(map(repr, LAYOUTS))}")
    return LAYOUTS[name]


def build_model(name: str, **options: Any) -> Backbone:
    """Build model ``name`` (see ``list_models``) with these options, all optional:

    - ``attention``: a registry family for every stage, or a list of 4 (default "bra").
    - ``attention_options``: a dict of family options for every stage, or a list of 4 dicts (or
      None); they override the per-stage defaults (``default_stage_options``).
    - ``backend``: the backend of every attention (default "torch"); ``model.backend`` switches it.
    - ``auto_pad``: let the families that need it (bra) pad maps their regions do not divide, as
      inputs of 512² or 1024² give (default False, as BiFormer).
    - ``num_classes`` (1000; 0 for no head), ``drop_path_rate`` (0.0).
    """
    layout = _layout(name)
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise AttentionConfigError(f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
                                   f"valid: {', '.join(MODEL_OPTIONS)}")
    return Backbone(layout, **{**MODEL_OPTIONS, **options})


def list_models() -> dict[str, dict[str, Any]]:
    """Every model name with its paper name, layout and options (with defaults)."""
    return {name: {"display_name": layout.display_name, "depths": list(layout.depths), "dims": list(layout.dims),
                   "mlp_ratio": layout.mlp_ratio, "options": dict(MODEL_OPTIONS)}
            for name, layout in LAYOUTS.items()}
