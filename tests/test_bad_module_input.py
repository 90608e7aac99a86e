"""Malformed module options, inputs and model settings: each must raise a ValueError subclass of the
suite (AttentionConfigError or BackendUnavailableError) whose message names the bad value.

Nothing else may come out: no TypeError / RuntimeError / IndexError from deep inside PyTorch, no
plain ValueError from a conversion, and no silence (a bad value that used to become a default, run
as truthy, upsample keys or give NaN output now raises, so no such output can pass). Every case is
one call on tiny modules (dim 8, 2 heads, maps of a few tokens); the model cases build the real
layouts, which is what most of the file's time goes to.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import pytest
import torch

import attentions
from attentions import AttentionConfigError, BackendUnavailableError
from attentions.models import build_model
from registry_cases import families, families_with_backend, is_built_in

NAN, INF = math.nan, math.inf
DIM, HEADS = 8, 2
# the smallest valid options per family for the 4×4 maps below; a family without an entry takes its defaults
SMALL = {"full": {}, "window": {"window_size": 2}, "deformable": {"fmap_size": 4}, "bra": {"n_win": 2, "topk": 2},
         "neighborhood": {"kernel_size": 3}}
FAMILIES = families()  # every registered family


def build(family: str, **options: Any) -> attentions.AttentionModule:
    return attentions.build(family, dim=DIM, num_heads=HEADS, **{**SMALL.get(family, {}), **options})


def case(case_id: str, action: Callable[[], object], *expected: str):
    """A case: ``action`` must raise, and every string of ``expected`` must be in the message."""
    return pytest.param(action, expected, id=case_id)


def option(family: str, name: str, value: Any, **context: Any):
    """Building ``family`` with ``name=value`` (and valid ``context``) must name the option and the value."""
    return case(f"{family}-{name}={value!r}", functools.partial(build, family, **context, **{name: value}),
                name, repr(value))


def base_option(name: str, value: Any):
    """dim / num_heads, checked by the base class for every family."""
    options = {"dim": DIM, "num_heads": HEADS, name: value}
    return case(f"full-{name}={value!r}", functools.partial(attentions.build, "full", **options), name, repr(value))


def forward(family: str, x: Any, *, dtype: torch.dtype = torch.float32, backend: str = "torch", grad: bool = True,
            macs: bool = False, **options: Any) -> Callable[[], object]:
    """Build ``family`` in ``dtype`` and run it on ``x`` (with ``macs``, also count it first)."""
    def run() -> object:
        module = build(family, backend=backend, **options).to(dtype)
        if macs:
            module.macs(1, *x.shape[1:3])
        with torch.set_grad_enabled(grad):
            return module(x)
    return run


def nhwc(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


MAP = nhwc(1, 4, 4, DIM)


def count(family: str, *sizes: Any, useful: bool = False, **options: Any) -> Callable[[], object]:
    """Build ``family`` and count its ``macs`` (with ``useful``, its ``useful_macs``) at ``sizes``."""
    def run() -> object:
        module = build(family, **options)
        return (module.useful_macs if useful else module.macs)(*sizes)
    return run


def size(family: str, name: str, value: Any, *, useful: bool = False):
    """``macs`` (or ``useful_macs``) with one bad size of a 1×4×4 input must name the size and the value."""
    sizes = {"batch": 1, "height": 4, "width": 4, name: value}
    return case(f"{family}-{'useful_' if useful else ''}macs-{name}={value!r}",
                count(family, *sizes.values(), useful=useful), name, repr(value), ">= 1")


def availability(family: str, backend: str, device: Any = "cpu", **options: Any):
    """``backend_available`` with one bad argument (``device`` or the one of ``options``) must name its value."""
    name, bad = next(iter(options.items()), ("device", device))
    return case(f"backend_available-{name}={bad!r}",
                functools.partial(attentions.backend_available, family, backend, device, **options), name, repr(bad))


class NoReferenceBackend(attentions.FullAttention):
    """A family whose backends lack its reference backend ('torch'): the registry must refuse it."""

    family = "no_reference"
    backends = {"sdpa": attentions.FullAttention.backends["sdpa"]}


def switch_backend(model_name: str, backend: Any, **options: Any) -> None:
    """Switch a built model's backend; a refused switch must leave every block on its old backend."""
    model = build_model(model_name, num_classes=0, **options)
    before = [m.backend for m in model.attention_modules()]
    try:
        model.backend = backend
    finally:
        after = [m.backend for m in model.attention_modules()]
        assert after == before, f"a refused switch changed blocks: {sorted(set(after) - set(before))}"


def model_forward(image: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return build_model("biformer_tiny", num_classes=0)(image)
    return run


CONSTRUCTION = [
    # the base class: dim and num_heads, every family
    base_option("dim", 0), base_option("dim", -8), base_option("dim", 8.0), base_option("dim", "8"),
    base_option("num_heads", 0), base_option("num_heads", True), base_option("num_heads", 2.0),
    option("full", "backend", "cuda_fast"), option("window", "backend", None),
    # full
    option("full", "qk_scale", 0), option("full", "qk_scale", -0.5), option("full", "qk_scale", NAN),
    option("full", "qk_scale", INF), option("full", "qk_scale", "0.5"), option("full", "qk_scale", True),
    option("full", "qkv_bias", "yes"), option("full", "qkv_bias", 1),
    option("full", "side_dwconv", 4), option("full", "side_dwconv", 3.0),
    # window
    option("window", "window_size", 0), option("window", "window_size", 7.0), option("window", "window_size", True),
    option("window", "shift_size", -1), option("window", "shift_size", 2), option("window", "shift_size", 1.5),
    option("window", "qk_scale", 0.0), option("window", "qk_scale", NAN), option("window", "qk_scale", -INF),
    option("window", "qkv_bias", None),
    # deformable
    option("deformable", "n_groups", 0), option("deformable", "n_groups", 3), option("deformable", "n_groups", True),
    option("deformable", "stride", 0), option("deformable", "stride", 1.5),
    option("deformable", "offset_range_factor", INF), option("deformable", "offset_range_factor", NAN),
    option("deformable", "offset_range_factor", -INF), option("deformable", "offset_range_factor", "big"),
    option("deformable", "offset_range_factor", None), option("deformable", "offset_range_factor", True),
    option("deformable", "offset_kernel", 4), option("deformable", "offset_kernel", 0),
    option("deformable", "offset_kernel", "3"),
    option("deformable", "use_pe", "yes"),
    option("deformable", "fmap_size", (4,)), option("deformable", "fmap_size", (4, 4, 4)),
    option("deformable", "fmap_size", "14"), option("deformable", "fmap_size", (4, 0)),
    option("deformable", "fmap_size", (4.0, 4)), option("deformable", "fmap_size", True),
    option("deformable", "fmap_size", 0), option("deformable", "fmap_size", None),
    option("deformable", "dwc_pe", "yes"),
    case("deformable-dwc_pe-without-use_pe", functools.partial(build, "deformable", dwc_pe=True, use_pe=False),
         "dwc_pe=True", "use_pe=False"),
    # bra
    option("bra", "n_win", 0), option("bra", "n_win", 2.0),
    option("bra", "qk_dim", 0), option("bra", "qk_dim", -8), option("bra", "qk_dim", "8"),
    option("bra", "qk_scale", 0), option("bra", "qk_scale", NAN), option("bra", "qk_scale", INF),
    option("bra", "qk_scale", -1),
    option("bra", "kv_per_win", 0, kv_downsample_mode="ada_avgpool"),
    option("bra", "kv_per_win", 2.5, kv_downsample_mode="ada_maxpool"),
    option("bra", "kv_per_win", "2"),
    option("bra", "kv_downsample_ratio", 0, kv_downsample_mode="avgpool"),
    option("bra", "kv_downsample_ratio", 2.0, kv_downsample_mode="maxpool"),
    option("bra", "kv_downsample_kernel", "3"),
    option("bra", "kv_downsample_mode", None), option("bra", "kv_downsample_mode", "bogus"),
    option("bra", "topk", 0), option("bra", "topk", 1.5), option("bra", "topk", 5),
    option("bra", "param_attention", "qkvx"),
    option("bra", "param_routing", "yes"), option("bra", "diff_routing", 1), option("bra", "soft_routing", "no"),
    option("bra", "side_dwconv", 2),
    option("bra", "auto_pad", "yes"), option("bra", "auto_pad", None),
    # neighborhood
    option("neighborhood", "kernel_size", 4), option("neighborhood", "kernel_size", 0),
    option("neighborhood", "kernel_size", 7.0), option("neighborhood", "kernel_size", True),
    option("neighborhood", "dilation", 0), option("neighborhood", "dilation", 1.5),
    option("neighborhood", "stride", 0), option("neighborhood", "stride", 5, rel_pos_bias=False),
    option("neighborhood", "stride", 2, rel_pos_bias=True),
    option("neighborhood", "rel_pos_bias", "yes"), option("neighborhood", "qkv_bias", 1),
    option("neighborhood", "qk_scale", 0), option("neighborhood", "qk_scale", NAN),
]

INPUTS = [
    # the input's dtype against the module's parameters
    *[case(f"{family}-float64-input-into-float32", forward(family, MAP.double()), "torch.float64", "torch.float32")
      for family in FAMILIES],
    case("full-float16-input-into-float32", forward("full", MAP.half()), "torch.float16", "torch.float32"),
    case("window-bfloat16-input-into-float32", forward("window", MAP.bfloat16()), "torch.bfloat16", "torch.float32"),
    case("bra-float32-input-into-float64", forward("bra", MAP, dtype=torch.float64), "torch.float32",
         "torch.float64"),
    case("deformable-float32-input-into-bfloat16", forward("deformable", MAP, dtype=torch.bfloat16),
         "torch.float32", "torch.bfloat16"),
    # integer and boolean tensors
    case("full-int64-input", forward("full", MAP.long()), "torch.int64"),
    case("bra-int32-input", forward("bra", MAP.int()), "torch.int32"),
    case("window-bool-input", forward("window", MAP > 0), "torch.bool"),
    # shapes
    case("full-3d-input", forward("full", nhwc(4, 4, DIM)), str((4, 4, DIM))),
    case("deformable-5d-input", forward("deformable", nhwc(1, 1, 4, 4, DIM)), str((1, 1, 4, 4, DIM))),
    case("deformable-wrong-channels", forward("deformable", nhwc(1, 4, 4, 6)), "6 channels", f"dim={DIM}"),
    case("window-nchw-input", forward("window", nhwc(1, DIM, 4, 4)), "4 channels", str((1, DIM, 4, 4))),
    case("full-empty-batch", forward("full", nhwc(0, 4, 4, DIM)), str((0, 4, 4, DIM))),
    case("bra-empty-width", forward("bra", nhwc(1, 4, 0, DIM)), str((1, 4, 0, DIM))),
    # not a tensor
    case("deformable-list-input", forward("deformable", [[1.0]]), "list"),
    case("window-none-input", forward("window", None), "NoneType"),
    case("full-numpy-input", forward("full", np.zeros((1, 4, 4, DIM), dtype=np.float32)), "ndarray"),
    # FlexAttention on the CPU has no float64 (forward only there: no_grad)
    *[case(f"{family}-flex-float64-on-cpu", forward(family, MAP.double(), dtype=torch.float64, backend="flex",
                                                    grad=False), "flex", "torch.float64", "cpu")
      for family in families_with_backend("flex")],
    # sizes only the forward knows
    case("neighborhood-kernel-wider-than-map", forward("neighborhood", MAP, kernel_size=5), "height 4",
         "kernel_size × dilation = 5 × 1 = 5"),
    case("neighborhood-dilated-kernel-wider-than-map", forward("neighborhood", MAP, dilation=2), "height 4",
         "kernel_size × dilation = 3 × 2 = 6"),
    case("bra-ada_avgpool-kv_per_win-above-region", forward("bra", MAP, kv_downsample_mode="ada_avgpool",
                                                            kv_per_win=3), "kv_per_win 3", "2×2"),
    case("bra-ada_maxpool-kv_per_win-above-short-side", forward("bra", nhwc(1, 4, 8, DIM),
                                                                kv_downsample_mode="ada_maxpool", kv_per_win=3),
         "kv_per_win 3", "2×4"),
    case("bra-ada_avgpool-kv_per_win-above-region-macs", forward("bra", MAP, kv_downsample_mode="ada_avgpool",
                                                                 kv_per_win=4, macs=True), "kv_per_win 4", "2×2"),
    case("bra-avgpool-ratio-above-region", forward("bra", MAP, kv_downsample_mode="avgpool", kv_downsample_ratio=3),
         "kv_downsample_ratio 3", "2×2"),
    case("bra-map-not-divisible-by-n_win", forward("bra", nhwc(1, 5, 4, DIM)), "H=5", "n_win=2"),
    case("deformable-stride-above-map", forward("deformable", nhwc(1, 2, 5, DIM), stride=3), "stride 3", "2×5"),
]

MACS = [
    # the base class checks every family's sizes before counting (a str batch repeated the counts' strings)
    size("full", "batch", "8"), size("window", "height", 4.0), size("deformable", "width", True),
    size("bra", "batch", 0), size("full", "batch", -1), size("window", "width", -4),
    size("deformable", "height", None),
    size("bra", "batch", "2", useful=True), size("full", "height", 0, useful=True),
    size("bra", "width", 4.5, useful=True),
    # and that the module takes the map, as its forward would
    case("bra-macs-map-not-divisible-by-n_win", count("bra", 1, 5, 4), "H=5", "n_win=2", "auto_pad"),
    case("bra-useful_macs-map-not-divisible-by-n_win", count("bra", 1, 4, 5, useful=True), "W=5", "n_win=2"),
    case("deformable-macs-stride-above-map", count("deformable", 1, 2, 5, stride=3), "stride 3", "2×5"),
]

AVAILABILITY = [
    # devices PyTorch cannot read: the allowed types are named, not PyTorch's RuntimeError
    case("backend_available-tpu", functools.partial(attentions.backend_available, "bra", "sdpa", "tpu"),
         "'tpu'", "cpu, cuda"),
    availability("full", "torch", "cuda:x"), availability("window", "sdpa", None), availability("full", "torch", 0),
    # a dtype that is not a torch.dtype, a backward that is not a bool (both used to answer as if valid)
    availability("bra", "torch", "cpu", dtype="float16"), availability("full", "sdpa", "cpu", dtype=2),
    availability("deformable", "torch", "cpu", backward="no"),
    # registering families and backends
    case("register-not-a-class", functools.partial(attentions.register, 3), "AttentionModule", "3"),
    case("register-without-reference-backend", functools.partial(attentions.register, NoReferenceBackend),
         "'torch'", "'sdpa'"),
    case("backend-devices-a-string", functools.partial(attentions.Backend, "b", abs, "d", devices="cuda"),
         "devices", "'cuda'"),
    case("backend-devices-unknown", functools.partial(attentions.Backend, "b", abs, "d", devices=("gpu",)),
         "('gpu',)", "cpu, cuda"),
    case("backend-dtypes-strings", functools.partial(attentions.Backend, "b", abs, "d", dtypes=("float16",)),
         "dtypes", "('float16',)"),
    # a truthy non-bool returned the attention mask tuple
    case("bra-ret_attn_mask-a-string", lambda: build("bra")(MAP, ret_attn_mask="no"), "ret_attn_mask", "'no'"),
]

MODELS = [
    # a backend some stage lacks: refused before any block switches
    case("biformer-switch-to-chunked", functools.partial(switch_backend, "biformer_tiny", "chunked"),
         "'chunked'", "stage 3 (full)"),
    case("mixed-switch-to-chunked", functools.partial(switch_backend, "swin_layout", "chunked",
                                                      attention=["bra", "bra", "deformable", "window"]),
         "'chunked'", "stage 2 (deformable)", "stage 3 (window)"),
    case("biformer-switch-to-unknown", functools.partial(switch_backend, "biformer_tiny", "nope"), "'nope'"),
    case("biformer-switch-to-int", functools.partial(switch_backend, "biformer_tiny", 3), "3"),
    case("biformer-switch-to-list", functools.partial(switch_backend, "biformer_tiny", ["torch"]), "['torch']"),
    # build_model's own options
    case("model-name-list", functools.partial(build_model, ["biformer_tiny"]), "['biformer_tiny']"),
    *[case(f"model-{name}={value!r}", functools.partial(build_model, "biformer_tiny", **{name: value}), name,
           repr(value))
      for name, value in [("drop_path_rate", NAN), ("drop_path_rate", "0.1"), ("drop_path_rate", -0.1),
                          ("num_classes", 10.0), ("num_classes", True), ("auto_pad", 1), ("attention", None)]],
    case("model-three-attentions", functools.partial(build_model, "swin_layout", attention=["bra"] * 3),
         "list of 4", "got 3"),
    case("model-backend-chunked-at-build", functools.partial(build_model, "biformer_tiny", backend="chunked"),
         "'chunked'", "stage 3"),
    # family options passed through a model: the stage is named too
    *[case(f"model-{family}-{name}={value!r}",
           functools.partial(build_model, "swin_layout", attention=family, attention_options={name: value}),
           "stage 0", name, repr(value))
      for family, name, value in [("full", "qk_scale", 0), ("window", "window_size", 7.0),
                                  ("deformable", "offset_range_factor", NAN), ("bra", "topk", -3),
                                  ("bra", "kv_per_win", "2")]],
    # images
    case("model-float64-image-into-float32", model_forward(torch.randn(1, 3, 32, 32, dtype=torch.float64)),
         "torch.float64", "torch.float32"),
    case("model-int-image", model_forward(torch.zeros(1, 3, 32, 32, dtype=torch.int64)), "torch.int64"),
    case("model-meta-image-into-cpu-model", model_forward(torch.empty(1, 3, 32, 32, device="meta")), "meta", "cpu"),
]


@pytest.mark.parametrize("action,expected", CONSTRUCTION + INPUTS + MACS + AVAILABILITY + MODELS)
def test_raises_a_suite_error_that_names_the_value(action, expected):
    with pytest.raises(ValueError) as info:  # anything else (TypeError, RuntimeError, ...) fails the test as is
        action()
    assert isinstance(info.value, (AttentionConfigError, BackendUnavailableError)), \
        f"a plain {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    missing = [text for text in expected if text not in message]
    assert not missing, f"{missing} not in the message: {message}"


@pytest.mark.parametrize("family", [family for family in FAMILIES if is_built_in(family)])
def test_every_option_of_a_family_has_a_bad_value_case(family):
    """The matrix covers what the registry lists: each constructor option of each of the package's families (read
    from its signature, so an option added later is missed until it has a case) has a bad value above."""
    ids = [param.id for param in CONSTRUCTION]
    uncovered = [name for name in attentions.family_options(family)
                 if not any(case_id.startswith(f"{family}-{name}=") for case_id in ids)]
    assert not uncovered, f"no bad-value case for {family}'s option(s) {uncovered}"


@pytest.mark.parametrize("family", FAMILIES)
def test_macs_take_numpy_integers_as_ints(family):
    """A numpy integer is an integer: the same counts as for ints, and ints, not numpy scalars."""
    module = build(family)
    for counted in (module.macs(np.int64(2), np.int32(4), np.int16(4)), module.useful_macs(np.int64(2), 4, 4)):
        assert counted == module.macs(2, 4, 4)
        assert all(type(value) is int for value in counted.values()), counted


def test_macs_of_a_map_bra_pads():
    """With auto_pad BRA counts a map its regions do not divide: the padded map in ``macs``, less in
    ``useful_macs``."""
    module = build("bra", auto_pad=True)
    assert module.macs(1, 5, 4) == module.macs(1, 6, 4)
    assert module.useful_macs(1, 5, 4).total < module.macs(1, 5, 4).total


@pytest.mark.parametrize("device", ["cuda:0", torch.device("cuda", 0)])
def test_backend_available_takes_a_device_with_an_index(device):
    """'cuda:0' is a CUDA device: the same answer as for 'cuda' (on a machine without one, a reason, not an error)."""
    ok, reason = attentions.backend_available("bra", "sdpa", device)
    assert (ok, reason) == attentions.backend_available("bra", "sdpa", "cuda")
    if not torch.cuda.is_available():
        assert not ok and "CUDA" in reason
