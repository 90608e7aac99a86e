"""Whole backbones (``attentions.models``): the published BiFormer and NAT figures, checkpoint names, the wiring
against a functional float64 reference, every attention choice forward and backward, backends, errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis

import attentions
from attentions import AttentionConfigError
from attentions.models import build_model, list_models
from registry_cases import families

F64 = torch.float64
# Published params (M) and fvcore GMACs at 224², batch 1 (BiFormer's README and paper; Swin-T layout: BiFormer-STL).
# NAT and DiNAT: the classification tables of SHI-Labs/Neighborhood-Attention-Transformer (NAT.md, DiNAT.md; the NAT
# paper's ImageNet table), rounded there to 1 M and 0.1 G; the authors count FLOPs with fvcore plus NATTEN's handles.
PUBLISHED = {
    "biformer_tiny": (13.14, 2.228),
    "biformer_small": (25.54, 4.487),
    "biformer_base": (56.80, 9.795),
    "swin_layout": (28.37, 4.590),
    "nat_mini": (20, 2.7),
    "nat_tiny": (28, 4.3),
    "nat_small": (51, 7.8),
    "nat_base": (90, 13.7),
    "dinat_tiny": (28, 4.3),
}
FAMILIES = families()  # every registered family: each is an attention choice of swin_layout
SMALL = 64  # stage maps 16, 8, 4, 2: BRA's 7×7 regions need auto_pad, every other family takes them as they are
# Families whose default options need larger maps than SMALL gives: a 7×7 neighborhood needs maps of 7 or more.
SIZE = {"neighborhood": 224}  # stage maps 56, 28, 14, 7


def fvcore_gmacs(model: torch.nn.Module, size: int = 224) -> float:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        analysis = FlopCountAnalysis(model.eval(), torch.randn(1, 3, size, size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.total() / 1e9
    finally:
        logging.disable(previous)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64 model with every floating state entry random: parameters N(0, 0.2²), BN statistics too
    (variances in [0.5, 1.5]), so that a misplaced norm or residual changes the output."""
    generator = torch.Generator().manual_seed(seed)
    model = model.to(F64)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=F64) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=F64) * 0.2)
    return model


def image(batch: int = 2, size: int = SMALL, seed: int = 1, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------
# published figures and checkpoint names
# --------------------------------------------------------------------------------------------

# seconds each on the CPU: the slow tier's
LARGER = ("biformer_small", "biformer_base", "nat_mini", "nat_small", "nat_base")


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] * (name in LARGER))
                                  for name in PUBLISHED])
def test_params_and_gmacs_match_the_published_figures(name):
    params_m, gmacs = PUBLISHED[name]
    model = build_model(name)
    measured_params = sum(p.numel() for p in model.parameters()) / 1e6
    measured_gmacs = fvcore_gmacs(model)
    assert measured_params == pytest.approx(params_m, rel=0.01)
    assert measured_gmacs == pytest.approx(gmacs, rel=0.01)


def bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def conv(prefix: str, out_channels: int, in_channels: int, kernel: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_channels, in_channels, kernel, kernel), f"{prefix}.bias": (out_channels,)}


def linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_features, in_features), **({f"{prefix}.bias": (out_features,)} if bias else {})}


def ln(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def official_keys(depths: tuple[int, ...], dims: tuple[int, ...], style: str) -> dict[str, tuple[int, ...]]:
    """The authors' state_dict names and shapes, written out from rayleizhu/BiFormer's models/biformer.py
    (style 'biformer') and models/biformer_stl.py ('swin'): BRA with topk 1/4/16 in stages 0-2
    (``qkv.qkv``, ``wo``, ``lepe``), AttentionLePE (``qkv`` without bias, ``proj``, ``lepe``) in stage 3."""
    keys: dict[str, tuple[int, ...]] = {}
    if style == "biformer":
        keys |= conv("downsample_layers.0.0", dims[0] // 2, 3, 3) | bn("downsample_layers.0.1", dims[0] // 2)
        keys |= conv("downsample_layers.0.3", dims[0], dims[0] // 2, 3) | bn("downsample_layers.0.4", dims[0])
        for i in range(1, 4):
            keys |= conv(f"downsample_layers.{i}.0", dims[i], dims[i - 1], 3) | bn(f"downsample_layers.{i}.1", dims[i])
    else:
        keys |= conv("downsample_layers.0.0", dims[0], 3, 4) | bn("downsample_layers.0.1", dims[0])
        for i in range(1, 4):
            keys |= bn(f"downsample_layers.{i}.0", dims[i - 1])
            keys |= conv(f"downsample_layers.{i}.1", dims[i], dims[i - 1], 2)
    ratio, fc2 = (3, 3) if style == "biformer" else (4, 2)
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        for j in range(depth):
            block = f"stages.{i}.{j}" if style == "biformer" else f"stages.{i}.blocks.{j}"
            if style == "biformer":
                keys |= {f"{block}.pos_embed.weight": (dim, 1, 3, 3), f"{block}.pos_embed.bias": (dim,)}
            keys |= ln(f"{block}.norm1", dim) | ln(f"{block}.norm2", dim)
            if i < 3:
                keys |= linear(f"{block}.attn.qkv.qkv", 3 * dim, dim) | linear(f"{block}.attn.wo", dim, dim)
            else:
                keys |= linear(f"{block}.attn.qkv", 3 * dim, dim, bias=False) | linear(f"{block}.attn.proj", dim, dim)
            keys |= {f"{block}.attn.lepe.weight": (dim, 1, 5, 5), f"{block}.attn.lepe.bias": (dim,)}
            keys |= linear(f"{block}.mlp.0", ratio * dim, dim) | linear(f"{block}.mlp.{fc2}", dim, ratio * dim)
    return keys | bn("norm", dims[3]) | linear("head", 1000, dims[3])


def nat_keys(depths: tuple[int, ...], dims: tuple[int, ...], mlp_ratio: int,
             layer_scale: bool) -> dict[str, tuple[int, ...]]:
    """NAT's state_dict names and shapes, written out from SHI-Labs/Neighborhood-Attention-Transformer's
    classification/nat.py (DiNAT's dinat.py builds the same class): ConvTokenizer, NATBlock levels whose
    ConvDownsampler closes each level but the last, NATLayer blocks with NATTEN's NeighborhoodAttention2D
    (``qkv``, ``rpb``, ``proj``) and, for NAT-S/B, layer scales ``gamma1``/``gamma2``."""
    keys = conv("patch_embed.proj.0", dims[0] // 2, 3, 3) | conv("patch_embed.proj.1", dims[0], dims[0] // 2, 3)
    keys |= ln("patch_embed.norm", dims[0])
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        heads = dim // 32
        for j in range(depth):
            block = f"levels.{i}.blocks.{j}"
            keys |= ln(f"{block}.norm1", dim) | ln(f"{block}.norm2", dim)
            keys |= linear(f"{block}.attn.qkv", 3 * dim, dim) | linear(f"{block}.attn.proj", dim, dim)
            keys |= {f"{block}.attn.rpb": (heads, 13, 13)}
            keys |= linear(f"{block}.mlp.fc1", mlp_ratio * dim, dim) | linear(f"{block}.mlp.fc2", dim, mlp_ratio * dim)
            if layer_scale:
                keys |= {f"{block}.gamma1": (dim,), f"{block}.gamma2": (dim,)}
        if i < 3:
            keys |= {f"levels.{i}.downsample.reduction.weight": (dims[i + 1], dim, 3, 3)}
            keys |= ln(f"levels.{i}.downsample.norm", dims[i + 1])
    return keys | ln("norm", dims[3]) | linear("head", 1000, dims[3])


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_state_dict_names_and_shapes_are_the_official_checkpoints(name):
    info = list_models()[name]
    model = build_model(name)
    depths, dims, style = tuple(info["depths"]), tuple(info["dims"]), model.layout.style
    expected = nat_keys(depths, dims, info["mlp_ratio"], name in ("nat_small", "nat_base")) if style == "nat" \
        else official_keys(depths, dims, style)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected


def test_a_nat_block_has_the_checkpoint_keys():
    """One block spelled out, as NAT's classification/nat.py names it (NAT-S/B add gamma1, gamma2)."""
    keys = [k for k in build_model("nat_tiny").state_dict() if k.startswith("levels.2.blocks.17.")]
    assert keys == [f"levels.2.blocks.17.{k}" for k in (
        "norm1.weight", "norm1.bias", "attn.rpb", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
        "mlp.fc2.bias")]
    scaled = build_model("nat_small").levels[0].blocks[0]
    assert scaled.gamma1.shape == scaled.gamma2.shape == (96,) and (scaled.gamma1 == 1e-5).all()


def test_list_models_describes_every_name():
    models = list_models()
    assert list(models) == ["biformer_tiny", "biformer_small", "biformer_base", "swin_layout", "nat_mini", "nat_tiny",
                            "nat_small", "nat_base", "dinat_tiny"]
    assert [m["display_name"] for m in models.values()] == ["BiFormer-T", "BiFormer-S", "BiFormer-B", "Swin-T layout",
                                                            "NAT-M", "NAT-T", "NAT-S", "NAT-B", "DiNAT-T"]
    assert models["swin_layout"]["depths"] == [2, 2, 6, 2] and models["swin_layout"]["dims"] == [96, 192, 384, 768]
    assert models["biformer_small"]["depths"] == [4, 4, 18, 4] and models["biformer_base"]["dims"][0] == 96
    assert models["biformer_tiny"]["options"]["attention"] == "bra"
    assert models["nat_mini"]["depths"] == [3, 4, 6, 5] and models["nat_tiny"]["depths"] == [3, 4, 18, 5]
    assert [models[n]["dims"][0] for n in ("nat_mini", "nat_tiny", "nat_small", "nat_base")] == [64, 64, 96, 128]
    assert [models[n]["mlp_ratio"] for n in ("nat_mini", "nat_tiny", "nat_small", "nat_base")] == [3, 3, 2, 2]
    assert {models[n]["options"]["attention"] for n in models if "nat" in n} == {"neighborhood"}


def test_nat_stages_are_7x7_neighborhood_attention_with_head_dim_32():
    model = build_model("nat_tiny")
    for stage, (blocks, dim) in enumerate(zip(model.stage_blocks(), (64, 128, 256, 512))):
        for block in blocks:
            attn = block.attn
            assert isinstance(attn, attentions.NeighborhoodAttention), stage
            assert (attn.kernel_size, attn.dilation, attn.stride, attn.dim, attn.num_heads) == (7, 1, 1, dim, dim // 32)
            assert attn.rpb.shape == (dim // 32, 13, 13) and attn.qkv.bias is not None and attn.scale == 32 ** -0.5
            assert block.norm1.eps == block.norm2.eps == 1e-5 and block.gamma1 is None and block.pos_embed is None
    assert model.patch_embed.norm.eps == model.norm.eps == 1e-5 and isinstance(model.norm, torch.nn.LayerNorm)
    # DiNAT-T: NAT-T with every second block dilated, by the stage map / 7 at 224² (DiNAT's dinat.py)
    dilations = [[block.attn.dilation for block in blocks] for blocks in build_model("dinat_tiny").stage_blocks()]
    assert dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]


def test_nat_takes_other_families_per_stage():
    model = build_model("nat_tiny", attention=["window", "neighborhood", "bra", "full"], num_classes=10).eval()
    assert [{b.attn.family for b in blocks} for blocks in model.stage_blocks()] == [
        {"window"}, {"neighborhood"}, {"bra"}, {"full"}]
    with torch.no_grad():
        assert model(image(batch=1, size=224, dtype=torch.float32)).shape == (1, 10)


def test_biformer_stages_are_bra_with_the_papers_options_and_full_attention_last():
    model = build_model("biformer_tiny")
    for stage, (dim, topk) in enumerate(zip((64, 128, 256), (1, 4, 16))):
        attn = model.stages[stage][0].attn
        assert isinstance(attn, attentions.BiLevelRoutingAttention)
        assert (attn.dim, attn.num_heads, attn.n_win, attn.topk, attn.qk_dim) == (dim, dim // 32, 7, topk, dim)
        assert (attn.side_dwconv, attn.kv_downsample_mode, attn.param_attention) == (5, "identity", "qkvo")
        assert attn.scale == dim ** -0.5 and not attn.auto_pad
    last = model.stages[3][1].attn
    assert isinstance(last, attentions.FullAttention)
    assert (last.num_heads, last.side_dwconv, last.qkv.bias) == (8, 5, None)  # BiFormer's AttentionLePE default heads
    plain = build_model("biformer_tiny", attention_options=[None, None, None, {"topk": -1}]).stages[3][0].attn
    assert isinstance(plain, attentions.FullAttention) and plain.lepe is None and plain.num_heads == 8


# --------------------------------------------------------------------------------------------
# wiring against a functional reference
# --------------------------------------------------------------------------------------------

def reference_forward(model: torch.nn.Module, x: torch.Tensor, style: str) -> torch.Tensor:
    """The backbone written out with torch.nn.functional from the state_dict (eval mode), calling each
    block's attention module as a black box (the families have their own tests)."""
    p = model.state_dict()

    def batch_norm(t, prefix):
        return F.batch_norm(t, p[f"{prefix}.running_mean"], p[f"{prefix}.running_var"], p[f"{prefix}.weight"],
                            p[f"{prefix}.bias"], training=False, eps=1e-5)

    def conv2d(t, prefix, stride, padding, groups=1):
        return F.conv2d(t, p[f"{prefix}.weight"], p[f"{prefix}.bias"], stride, padding, groups=groups)

    def layer_norm(t, prefix):
        return F.layer_norm(t, t.shape[-1:], p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps=1e-6)

    fc2 = 3 if style == "biformer" else 2
    for i in range(4):
        if style == "biformer" and i == 0:
            x = conv2d(F.gelu(batch_norm(conv2d(x, "downsample_layers.0.0", 2, 1), "downsample_layers.0.1")),
                       "downsample_layers.0.3", 2, 1)
            x = batch_norm(x, "downsample_layers.0.4")
        elif style == "biformer":
            x = batch_norm(conv2d(x, f"downsample_layers.{i}.0", 2, 1), f"downsample_layers.{i}.1")
        elif i == 0:
            x = batch_norm(conv2d(x, "downsample_layers.0.0", 4, 0), "downsample_layers.0.1")
        else:
            x = conv2d(batch_norm(x, f"downsample_layers.{i}.0"), f"downsample_layers.{i}.1", 2, 0)
        depth = model.layout.depths[i]
        for j in range(depth):
            block = f"stages.{i}.{j}" if style == "biformer" else f"stages.{i}.blocks.{j}"
            if style == "biformer":
                x = x + conv2d(x, f"{block}.pos_embed", 1, 1, groups=x.shape[1])
            t = x.permute(0, 2, 3, 1)
            t = t + model.get_submodule(f"{block}.attn")(layer_norm(t, f"{block}.norm1"))
            hidden = F.linear(layer_norm(t, f"{block}.norm2"), p[f"{block}.mlp.0.weight"], p[f"{block}.mlp.0.bias"])
            hidden = F.gelu(hidden)
            t = t + F.linear(hidden, p[f"{block}.mlp.{fc2}.weight"], p[f"{block}.mlp.{fc2}.bias"])
            x = t.permute(0, 3, 1, 2)
    pooled = batch_norm(x, "norm").mean((2, 3))
    return F.linear(pooled, p["head.weight"], p["head.bias"])


@pytest.mark.parametrize("name,size", [("biformer_tiny", 64), ("swin_layout", 32)])  # BRA pads every stage map
def test_forward_equals_a_functional_reference(name, size):
    model = randomized(build_model(name, auto_pad=True, num_classes=10)).eval()
    x = image(size=size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model, x, model.layout.style), rtol=1e-10, atol=1e-10)
        features = model.forward_features(x)
    assert features.shape == (2, model.layout.dims[-1], size // 32, size // 32)


def nat_reference_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """NAT (classification/nat.py) written out with torch.nn.functional from the state_dict, on NHWC maps as
    NAT runs them; each block's attention module is a black box."""
    p = model.state_dict()

    def layer_norm(t, prefix):
        return F.layer_norm(t, t.shape[-1:], p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps=1e-5)

    def conv_nhwc(t, prefix):  # 3×3 stride 2, padding 1
        return F.conv2d(t.permute(0, 3, 1, 2), p[f"{prefix}.weight"], p.get(f"{prefix}.bias"), 2, 1).permute(0, 2, 3, 1)

    t = layer_norm(conv_nhwc(conv_nhwc(x.permute(0, 2, 3, 1), "patch_embed.proj.0"), "patch_embed.proj.1"),
                   "patch_embed.norm")  # no activation between the tokenizer's convs
    for i, depth in enumerate(model.layout.depths):
        for j in range(depth):
            block = f"levels.{i}.blocks.{j}"
            gamma1, gamma2 = p.get(f"{block}.gamma1", 1.0), p.get(f"{block}.gamma2", 1.0)
            t = t + gamma1 * model.get_submodule(f"{block}.attn")(layer_norm(t, f"{block}.norm1"))
            hidden = F.gelu(F.linear(layer_norm(t, f"{block}.norm2"), p[f"{block}.mlp.fc1.weight"],
                                     p[f"{block}.mlp.fc1.bias"]))
            t = t + gamma2 * F.linear(hidden, p[f"{block}.mlp.fc2.weight"], p[f"{block}.mlp.fc2.bias"])
        if i < 3:
            t = layer_norm(conv_nhwc(t, f"levels.{i}.downsample.reduction"), f"levels.{i}.downsample.norm")
    pooled = layer_norm(t, "norm").mean((1, 2))
    return F.linear(pooled, p["head.weight"], p["head.bias"])


# 96² gives stage maps 24, 12, 6, 3: a 3×3 neighborhood fits, and so do DiNAT's dilations 8, 4, 2, 1 (3 × 8 = 24)
@pytest.mark.parametrize("name", ["nat_small", "dinat_tiny"])  # layer scale; dilated blocks
def test_nat_forward_equals_a_functional_reference(name):
    model = randomized(build_model(name, num_classes=10, attention_options={"kernel_size": 3})).eval()
    x = image(size=96)
    with torch.no_grad():
        reference = nat_reference_forward(model, x)
        torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)
        assert model.forward_features(x).shape == (2, model.layout.dims[-1], 3, 3)
        model.backend = "sdpa"
        assert {m.backend for m in model.attention_modules()} == {"sdpa"}
        torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# every attention choice, forward and backward; backends; blocks
# --------------------------------------------------------------------------------------------

CHOICES = [*FAMILIES, ["window", "deformable", "bra", "full"]]


@pytest.mark.parametrize("attention", CHOICES, ids=lambda a: a if isinstance(a, str) else "+".join(a))
def test_every_attention_choice_runs_forward_and_backward(attention):
    torch.manual_seed(0)
    model = build_model("swin_layout", attention=attention, auto_pad=True, num_classes=10).eval()
    size = max(SIZE.get(family, SMALL) for family in ([attention] if isinstance(attention, str) else attention))
    x = image(size=size, dtype=torch.float32).requires_grad_(True)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    families = [attention] * 4 if isinstance(attention, str) else attention
    assert model.attention == tuple(families)
    for stage, family in enumerate(families):
        modules = model.stages[stage].blocks
        expected = "full" if (family, stage) == ("bra", 3) else family  # BiFormer's topk -2 stage
        assert all(block.attn.family == expected for block in modules), (stage, family)


def test_training_mode_with_stochastic_depth():
    model = build_model("biformer_tiny", auto_pad=True, num_classes=10, drop_path_rate=0.2).train()
    x = image(size=64, dtype=torch.float32)
    torch.manual_seed(3)
    first = model(x)
    first.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.manual_seed(4)
    assert not torch.allclose(model(x), first)  # another draw of the dropped paths
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    rates = [block.drop_path.rate for stage in model.stages for block in stage if hasattr(block.drop_path, "rate")]
    assert len(rates) == 13 and rates == sorted(rates) and rates[-1] == pytest.approx(0.2)  # 0 for the first block


def test_backends_switch_without_changing_the_output():
    model = randomized(build_model("swin_layout", attention=["window", "deformable", "bra", "bra"], auto_pad=True,
                                   num_classes=10)).eval()
    x = image(batch=1, size=32)
    with torch.no_grad():
        reference = model(x)
        assert model.backend == "torch"
        model.backend = "sdpa"
        assert {m.backend for m in model.attention_modules()} == {"sdpa"} and model.backend == "sdpa"
        torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)
    built = randomized(build_model("swin_layout", attention=["window", "deformable", "bra", "bra"], auto_pad=True,
                                   num_classes=10, backend="sdpa")).eval()
    assert built.backend == "sdpa"


def test_window_blocks_alternate_shifts_as_swin():
    model = build_model("swin_layout", attention="window")
    shifts = [block.attn.shift_size for block in model.stages[2].blocks]
    assert shifts == [0, 3, 0, 3, 0, 3]
    assert all(block.attn.window_size == 7 for stage in model.stages for block in stage.blocks)
    model = build_model("swin_layout", attention="window", attention_options={"window_size": 5, "shift_size": 0})
    assert {block.attn.shift_size for stage in model.stages for block in stage.blocks} == {0}
    model = build_model("swin_layout", attention="window", attention_options={"window_size": 5})
    assert [block.attn.shift_size for block in model.stages[0].blocks] == [0, 2]


def test_per_stage_options_override_the_defaults():
    model = build_model("swin_layout", attention="deformable",
                        attention_options=[{"stride": 4}, None, {"n_groups": 1}, {"use_pe": False}])
    attn = [stage.blocks[0].attn for stage in model.stages]
    assert [a.stride for a in attn] == [4, 4, 2, 1]
    assert [a.n_groups for a in attn] == [1, 2, 1, 8]
    assert [a.offset_kernel for a in attn] == [9, 7, 5, 3]
    assert [a.rpe_table is None for a in attn] == [False, False, False, True]
    bra = build_model("swin_layout", attention_options={"n_win": 2, "topk": 2})
    assert all(block.attn.family == "bra" and block.attn.n_win == 2 for stage in bra.stages for block in stage.blocks)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,match", [
    ("resnet50", {}, "unknown model 'resnet50'; valid: 'biformer_tiny'"),
    ("biformer_tiny", {"depths": [1, 1, 1, 1]}, "unknown option.*depths.*valid: attention, attention_options"),
    ("swin_layout", {"attention": ["bra", "full", "full"]}, "list of 4 .* got 3"),
    ("swin_layout", {"attention": "linear"}, "unknown attention 'linear' for stage 0; valid: 'full', 'window'"),
    ("swin_layout", {"attention": ["bra", 3, "full", "full"]}, "attention of stage 1 must be an attention name, got 3"),
    ("swin_layout", {"attention_options": [{}] * 5}, "attention_options .* list of 4 .* got 5"),
    ("swin_layout", {"attention_options": "topk=4"}, "attention_options of stage 0 must be a dict or None"),
    ("swin_layout", {"attention": "window", "attention_options": [None, {"window_size": 0}, None, None]},
     r"stage 1 \(window, width 192\): window_size must be an integer >= 1, got 0"),
    ("swin_layout", {"attention_options": [None, None, None, {"top_k": -2}]}, r"stage 3 \(bra.*unknown option.*top_k"),
    ("biformer_tiny", {"attention_options": {"topk": 50}}, r"stage 0 .*topk must be an integer in 1..n_win² = 1..49"),
    ("biformer_tiny", {"backend": "cuda_magic"}, "unknown backend for 'bra' 'cuda_magic'; valid: 'torch', 'sdpa'"),
    ("biformer_tiny", {"num_classes": -1}, "num_classes must be an integer >= 0"),
    ("biformer_tiny", {"drop_path_rate": 1.0}, r"drop_path_rate must be a number in \[0, 1\), got 1.0"),
    ("biformer_tiny", {"auto_pad": "yes"}, "auto_pad must be True or False, got 'yes'"),
    ("dinat_tiny", {"attention_options": [{"dilation": [1, 8]}, None, None, None]},
     r"stage 0 \(neighborhood, width 64\): dilation must be one integer or a list of 3 \(one per block of the "
     r"stage\), got 2: \[1, 8\]"),
    ("nat_tiny", {"attention_options": [None, {"dilation": [1, 0, 1, 1]}, None, None]},
     r"stage 1 \(neighborhood, width 128\): dilation must be an integer >= 1, got 0"),
    ("nat_tiny", {"attention_options": {"kernel_size": 4}}, r"stage 0 \(neighborhood.*kernel_size must be odd"),
])
def test_bad_options_raise_naming_the_value(name, options, match):
    with pytest.raises(AttentionConfigError, match=match):
        build_model(name, **options)


@pytest.fixture(scope="module")
def tiny_swin():
    return build_model("swin_layout", attention="full", num_classes=10).eval()


@pytest.mark.parametrize("x,match", [
    (torch.randn(3, 64, 64), r"NCHW image batch \(B, 3, H, W\), got \(3, 64, 64\)"),
    (torch.randn(1, 64, 64, 3), r"got \(1, 64, 64, 3\)"),
    (torch.randn(1, 4, 64, 64), r"got \(1, 4, 64, 64\)"),
    (torch.randint(0, 255, (1, 3, 64, 64)), "torch.int64"),
    (torch.randn(1, 3, 100, 64), "positive multiples of 32, got 100×64"),
])
def test_bad_images_raise(tiny_swin, x, match):
    with pytest.raises(AttentionConfigError, match=match):
        tiny_swin(x)


def test_nat_maps_smaller_than_the_neighborhood_raise():
    """NAT takes any image size whose stage maps hold the 7×7 neighborhood (dilated: 7 × dilation)."""
    with pytest.raises(AttentionConfigError, match=r"map 4×4: its height 4 is smaller than kernel_size × dilation = "
                                                   r"7 × 1 = 7"):
        build_model("nat_mini", num_classes=10).eval()(image(batch=1, size=128, dtype=torch.float32))
    with pytest.raises(AttentionConfigError, match=r"map 32×32: .* = 7 × 8 = 56"):
        build_model("dinat_tiny", num_classes=10).eval()(image(batch=1, size=128, dtype=torch.float32))


def test_bra_maps_that_regions_do_not_divide_need_auto_pad():
    model = build_model("biformer_tiny", num_classes=10).eval()
    with pytest.raises(AttentionConfigError, match="divisible by n_win=7; pass auto_pad=True"):
        model(image(batch=1, size=64, dtype=torch.float32))
    model = build_model("biformer_tiny", num_classes=10, auto_pad=True).eval()
    with torch.no_grad():
        assert model(image(batch=1, size=64, dtype=torch.float32)).shape == (1, 10)
