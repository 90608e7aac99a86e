"""Interchangeable vision attentions behind one NHWC interface.

>>> import attentions, torch
>>> attn = attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=4)
>>> attn(torch.randn(2, 56, 56, 64)).shape
torch.Size([2, 56, 56, 64])
>>> attn.backend = "sdpa"  # same weights, another backend
>>> attentions.models.build_model("biformer_tiny")(torch.randn(1, 3, 224, 224)).shape
torch.Size([1, 1000])
"""

from . import full, window, deformable, bra, neighborhood  # noqa: F401  (registration order is listing order)
from . import models  # noqa: F401  (whole backbones built from the registry: attentions.models.build_model)
from .bra import BiLevelRoutingAttention
from .deformable import DeformableAttention
from .errors import AttentionConfigError, BackendUnavailableError
from .full import FullAttention
from .neighborhood import NeighborhoodAttention
from .plugins import Plugin, PluginError, load_plugin, load_plugins, loaded_plugins
from .registry import (AttentionModule, Backend, MacCount, backend_available, build, custom_op_macs,
                       extension_modules, family_options, list_attentions, overridden_capabilities, register)
from .window import WindowAttention

__all__ = [
    "AttentionConfigError", "AttentionModule", "Backend", "BackendUnavailableError", "BiLevelRoutingAttention",
    "DeformableAttention", "FullAttention", "MacCount", "NeighborhoodAttention", "Plugin", "PluginError",
    "WindowAttention", "backend_available", "build", "custom_op_macs", "extension_modules", "family_options",
    "list_attentions", "load_plugin", "load_plugins", "loaded_plugins", "overridden_capabilities", "register",
]
