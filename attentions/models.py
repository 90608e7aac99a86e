"""Whole backbones for model-level tables: BiFormer-T/S/B, NAT-M/T/S/B and DiNAT-T, and a Swin-T-layout
backbone whose attention is chosen per stage from the registry.

Every layout is four stages of pre-norm blocks on NCHW images (NHWC inside a stage), with a norm
(BatchNorm; NAT: LayerNorm) before global average pooling and a linear classifier:

- **BiFormer** (Zhu et al., CVPR 2023; ``biformer_tiny/small/base``): an overlapping stem of two
  3×3 stride-2 convs, a 3×3 stride-2 conv between stages, and blocks of a 3×3 depthwise-conv
  positional embedding (residual), LN, attention, LN, MLP (ratio 3). BiFormer's attention is BRA
  with n_win 7, LePE 5×5 and topk 1, 4, 16 per stage, and in the last stage topk -2: full
  attention with LePE. Parameter names follow the authors' checkpoints.
- **Swin-T layout** (``swin_layout``, the BiFormer paper's BiFormer-STL ablation): depths 2-2-6-2,
  widths 96-768, a 4×4 patchify stem, 2×2 patch merging, blocks of LN, attention, LN, MLP (ratio 4).
  With ``attention="bra"`` it is BiFormer-STL, names included.
- **NAT** (Hassani et al., CVPR 2023; ``nat_mini/tiny/small/base``): a tokenizer of two 3×3 stride-2
  convs (no norm or activation between them) and a LayerNorm, a 3×3 stride-2 conv without bias and a
  LayerNorm closing each of the first three stages, and blocks of LN, neighborhood attention (7×7, with
  NAT's relative position bias), LN, MLP (ratio 3 for Mini/Tiny, 2 for Small/Base), with NAT's layer
  scale (1e-5) for Small/Base; LayerNorm eps 1e-5 throughout. **DiNAT-T** (Hassani & Shi, 2022;
  ``dinat_tiny``) is NAT-T whose every second block dilates its neighborhood by 8, 4, 2, 1 per stage
  (the stage map / 7 at 224²). Parameter names follow the authors' checkpoints (``patch_embed``,
  ``levels.<i>.blocks``, ``levels.<i>.downsample``).

Heads are width / 32 everywhere except where BiFormer's topk -1 / -2 builds full attention: the
authors build it with that class's default of 8 heads, and so does this module.

More than 400 lines: three published families of layouts (their stems, downsamplers, norms and checkpoint names)
around one backbone class, kept together so that a layout reads as one table entry.
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
NAT_KERNEL = 7
BIFORMER_TOPKS = (1, 4, 16, -2)
BIFORMER_FULL_HEADS = 8  # heads of BiFormer's topk -1 / -2 attention (its class default)
FULL_ATTENTION_TOPKS = (-1, -2)  # BiFormer's bra topk for full attention without / with LePE
IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class Layout:
    """The fixed architecture behind a model name."""

    display_name: str
    style: str  # "biformer", "swin" or "nat": stem, downsampling, norms, block and parameter names
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    mlp_ratio: int
    attention: str = "bra"  # the family of every stage unless build_model's ``attention`` says otherwise
    layer_scale: float | None = None  # NAT-S/B: the initial value of per-channel residual scales
    dilations: tuple[int, int, int, int] | None = None  # DiNAT: the dilation of every second block, per stage

    @property
    def input_multiple(self) -> int:
        """What H and W must divide by: Swin's patchify and merging convs would drop border pixels."""
        return 32 if self.style == "swin" else 1


LAYOUTS: dict[str, Layout] = {
    "biformer_tiny": Layout("BiFormer-T", "biformer", (2, 2, 8, 2), (64, 128, 256, 512), 3),
    "biformer_small": Layout("BiFormer-S", "biformer", (4, 4, 18, 4), (64, 128, 256, 512), 3),
    "biformer_base": Layout("BiFormer-B", "biformer", (4, 4, 18, 4), (96, 192, 384, 768), 3),
    "swin_layout": Layout("Swin-T layout", "swin", (2, 2, 6, 2), (96, 192, 384, 768), 4),
    "nat_mini": Layout("NAT-M", "nat", (3, 4, 6, 5), (64, 128, 256, 512), 3, "neighborhood"),
    "nat_tiny": Layout("NAT-T", "nat", (3, 4, 18, 5), (64, 128, 256, 512), 3, "neighborhood"),
    "nat_small": Layout("NAT-S", "nat", (3, 4, 18, 5), (96, 192, 384, 768), 2, "neighborhood", layer_scale=1e-5),
    "nat_base": Layout("NAT-B", "nat", (3, 4, 18, 5), (128, 256, 512, 1024), 2, "neighborhood", layer_scale=1e-5),
    "dinat_tiny": Layout("DiNAT-T", "nat", (3, 4, 18, 5), (64, 128, 256, 512), 3, "neighborhood",
                         dilations=(8, 4, 2, 1)),
}

# Options of every model, with their defaults (see ``build_model``); ``attention`` defaults to the layout's own.
MODEL_OPTIONS: dict[str, Any] = {
    "attention": "bra", "attention_options": None, "backend": "torch", "auto_pad": False, "num_classes": 1000,
    "drop_path_rate": 0.0,
}


def default_stage_options(family: str, stage: int, layout: Layout | None = None) -> dict[str, Any]:
    """A family's options in stage ``stage`` (0-3) of ``layout`` unless the caller overrides them.

    bra: BiFormer's (n_win 7, LePE 5, topk 1/4/16/-2). window: Swin's window 7 (every second block
    shifted by 3). deformable: DAT++'s all-stage layout, about 7×7 sampled points per map at 224²
    (stride 8/4/2/1, offset kernel 9/7/5/3, 1/2/4/8 groups, bias table for the 224² map).
    neighborhood: NAT's 7×7 kernel; in a DiNAT layout a dilation per block, the stage's on every
    second block (DiNAT-T: 1, 8, 1 / 1, 4, 1, 4 / 1, 2, ... / all 1). full: the family's defaults.
    """
    if family == "bra":
        return {"n_win": 7, "topk": BIFORMER_TOPKS[stage], "side_dwconv": 5}
    if family == "window":
        return {"window_size": 7}
    if family == "deformable":
        return {"stride": 8 >> stage, "offset_kernel": 9 - 2 * stage, "n_groups": 1 << stage, "fmap_size": 56 >> stage}
    if family == "neighborhood":
        options: dict[str, Any] = {"kernel_size": NAT_KERNEL}
        if layout is not None and layout.dilations is not None:
            options["dilation"] = [layout.dilations[stage] if index % 2 else 1
                                   for index in range(layout.depths[stage])]
        return options
    return {}


def block_options(family: str, options: dict[str, Any], index: int, depth: int) -> dict[str, Any]:
    """Options of the ``index``-th of a stage's ``depth`` blocks.

    Swin alternates W-MSA and SW-MSA: for window attention ``shift_size`` is the shift of every second
    block (default window // 2; 0 leaves every block unshifted). DiNAT sets neighborhood attention's
    dilation block by block: ``dilation`` may be a list of one per block.
    """
    if family == "window":
        shift = options.get("shift_size", options.get("window_size", 7) // 2)
        return {**options, "shift_size": shift if index % 2 else 0}
    dilations = options.get("dilation")
    if family == "neighborhood" and isinstance(dilations, (list, tuple)):
        if len(dilations) != depth:
            raise AttentionConfigError(f"dilation must be one integer or a list of {depth} (one per block of "
                                       f"the stage), got {len(dilations)}: {dilations!r}")
        return {**options, "dilation": dilations[index]}
    return options


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


# The state_dict names of the MLP's first Linear, activation and second Linear in each style's checkpoints.
# BiFormer keeps index 1 for an optional depthwise conv (off in every published model).
MLP_NAMES: dict[str, tuple[str, str, str]] = {
    "biformer": ("0", "2", "3"), "swin": ("0", "1", "2"), "nat": ("fc1", "act", "fc2")}
# LayerNorm eps of each style: BiFormer's 1e-6 (BiFormer-STL too); NAT keeps PyTorch's default.
LAYER_NORM_EPS: dict[str, float] = {"biformer": 1e-6, "swin": 1e-6, "nat": 1e-5}


def mlp(dim: int, ratio: int, names: tuple[str, str, str]) -> nn.Sequential:
    """Linear -> GELU -> Linear, named ``names`` in the state_dict (see ``MLP_NAMES``)."""
    hidden = ratio * dim
    layers = (nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
    return nn.Sequential(OrderedDict(zip(names, layers)))


class Block(nn.Module):
    """Pre-norm transformer block on NHWC maps, with BiFormer's optional conv positional embedding and
    NAT's optional layer scale (``gamma1``, ``gamma2``: per-channel factors of the two residual branches)."""

    def __init__(self, dim: int, attn: AttentionModule, mlp_ratio: int, pos_embed: bool,
                 mlp_names: tuple[str, str, str], drop_path: float = 0.0, eps: float = 1e-6,
                 layer_scale: float | None = None) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if pos_embed else None
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp(dim, mlp_ratio, mlp_names)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale is not None else None
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.pos_embed is not None:
            x = x + conv_nhwc(self.pos_embed, x)
        x = x + self.drop_path(scaled(self.gamma1, self.attn(self.norm1(x))))
        return x + self.drop_path(scaled(self.gamma2, self.mlp(self.norm2(x))))


def scaled(gamma: Tensor | None, branch: Tensor) -> Tensor:
    """A residual branch times its layer scale, if it has one."""
    return branch if gamma is None else gamma * branch


class Stage(nn.Sequential):
    """A stage's blocks: NCHW in and out, like the convolutions around it; NHWC inside."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map: NAT's norms after its convs and before pooling, which
    NAT applies to NHWC maps (same parameters, same names)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


Downsampling = tuple[nn.Module, list[nn.Module]]  # the stem, and the downsampler before each later stage


def biformer_downsampling(dims: Sequence[int]) -> Downsampling:
    """BiFormer's overlapping stem (3×3/2 conv, BN, GELU, 3×3/2 conv, BN) and 3×3/2 conv + BN merges."""
    half = dims[0] // 2
    stem = nn.Sequential(nn.Conv2d(IMAGE_CHANNELS, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
                         nn.Conv2d(half, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
    return stem, [nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b)) for a, b in zip(dims, dims[1:])]


def swin_downsampling(dims: Sequence[int]) -> Downsampling:
    """Swin-T's 4×4/4 patchify stem (conv, BN) and BN + 2×2/2 conv patch merging, as BiFormer-STL."""
    stem = nn.Sequential(nn.Conv2d(IMAGE_CHANNELS, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))
    return stem, [nn.Sequential(nn.BatchNorm2d(a), nn.Conv2d(a, b, 2, 2)) for a, b in zip(dims, dims[1:])]


def nat_downsampling(dims: Sequence[int]) -> Downsampling:
    """NAT's tokenizer (3×3/2 conv, 3×3/2 conv, LN: ``proj.0``, ``proj.1``, ``norm``) and downsamplers
    (3×3/2 conv without bias, LN: ``reduction``, ``norm``)."""
    half, eps = dims[0] // 2, LAYER_NORM_EPS["nat"]
    stem = nn.Sequential(OrderedDict(
        proj=nn.Sequential(nn.Conv2d(IMAGE_CHANNELS, half, 3, 2, 1), nn.Conv2d(half, dims[0], 3, 2, 1)),
        norm=ChannelLayerNorm(dims[0], eps=eps)))
    return stem, [nn.Sequential(OrderedDict(reduction=nn.Conv2d(a, b, 3, 2, 1, bias=False),
                                            norm=ChannelLayerNorm(b, eps=eps))) for a, b in zip(dims, dims[1:])]


DOWNSAMPLING = {"biformer": biformer_downsampling, "swin": swin_downsampling, "nat": nat_downsampling}


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

    Build it with ``build_model``. ``forward_features`` gives the normalised last feature map. Modules are
    named as the style's checkpoints: ``downsample_layers`` (stem, then one per later stage) and ``stages``
    for BiFormer and Swin; NAT's ``patch_embed`` and ``levels`` (each a stage's blocks, then the
    downsampler to the next stage).
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
        dims, style = layout.dims, layout.style
        stem, downsamplers = DOWNSAMPLING[style](dims)
        # on the CPU whatever the default device, so that a model can be built on the meta device too
        rates = torch.linspace(0, drop_path_rate, sum(layout.depths), device="cpu").tolist()
        stages = []
        for stage, (family, extra) in enumerate(zip(families, overrides)):
            options = {**default_stage_options(family, stage, layout), **(extra or {})}
            if "auto_pad" in family_options(family) and "auto_pad" not in options:
                options["auto_pad"] = auto_pad
            first = sum(layout.depths[:stage])
            stages.append(Stage(*[self._block(stage, family, options, index, backend, rates[first + index])
                                  for index in range(layout.depths[stage])]))
        if style == "nat":
            self.patch_embed = stem
            self.levels = nn.ModuleList()
            for blocks, downsampler in zip(stages, [*downsamplers, None]):
                level = nn.Sequential(OrderedDict(blocks=blocks))
                if downsampler is not None:  # NAT's last level has none
                    level.add_module("downsample", downsampler)
                self.levels.append(level)
        else:
            self.downsample_layers = nn.ModuleList([stem, *downsamplers])
            self.stages = nn.ModuleList(stages if style == "biformer"
                                        else [nn.Sequential(OrderedDict(blocks=blocks)) for blocks in stages])
        self.norm = ChannelLayerNorm(dims[-1], eps=LAYER_NORM_EPS[style]) if style == "nat" \
            else nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()
        self.apply(init_weights)

    def _block(self, stage: int, family: str, options: dict[str, Any], index: int, backend: str,
               drop_path: float) -> Block:
        layout = self.layout
        dim = layout.dims[stage]
        try:
            attn = stage_attention(family, dim, block_options(family, options, index, layout.depths[stage]), backend)
        except AttentionConfigError as exc:
            raise AttentionConfigError(f"stage {stage} ({family}, width {dim}): {exc}") from None
        return Block(dim, attn, layout.mlp_ratio, pos_embed=layout.style == "biformer",
                     mlp_names=MLP_NAMES[layout.style], drop_path=drop_path, eps=LAYER_NORM_EPS[layout.style],
                     layer_scale=layout.layer_scale)

    def stage_blocks(self) -> list[Stage]:
        """Each stage's blocks, in order: ``stages.<i>``, ``stages.<i>.blocks`` or ``levels.<i>.blocks``."""
        if self.layout.style == "biformer":
            return list(self.stages)
        return [container.blocks for container in (self.levels if self.layout.style == "nat" else self.stages)]

    def pipeline(self) -> list[nn.Module]:
        """What ``forward_features`` chains before the last norm: stem, stages and downsamplers, in order."""
        if self.layout.style == "nat":
            return [self.patch_embed, *self.levels]
        return [module for pair in zip(self.downsample_layers, self.stages) for module in pair]

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
        staged = [(stage, m) for stage, blocks in enumerate(self.stage_blocks()) for m in blocks.modules()
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
        for module in self.pipeline():
            x = module(x)
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

    - ``attention``: a registry family for every stage, or a list of 4 (default: the layout's own, "bra"
      or for NAT and DiNAT "neighborhood").
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
    return Backbone(layout, **{**model_defaults(layout), **options})


def model_defaults(layout: Layout) -> dict[str, Any]:
    """``MODEL_OPTIONS`` with the layout's own attention."""
    return {**MODEL_OPTIONS, "attention": layout.attention}


def list_models() -> dict[str, dict[str, Any]]:
    """Every model name with its paper name, layout and options (with defaults)."""
    return {name: {"display_name": layout.display_name, "depths": list(layout.depths), "dims": list(layout.dims),
                   "mlp_ratio": layout.mlp_ratio, "options": model_defaults(layout)}
            for name, layout in LAYOUTS.items()}
