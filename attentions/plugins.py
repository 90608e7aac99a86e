"""Plugins: attention families and backends that live in another project, joined to the registry by importing them.

A plugin is a module that, when imported, registers families (``attentions.register``) or adds ``Backend`` records
to registered families. ``load_plugin`` imports one and checks what it did against the contract (docs/plugins.md):
it must register something, take no name that already exists, and each family it registers must build with its
defaults and count its MACs. A plugin that breaks a rule raises ``PluginError``, one line naming the plugin and
the rule, and leaves the registry as it was, so the built-in families are unaffected.

Plugins come from three places, read by ``run_bench.py`` at start-up (``load_plugins``): the ``--plugin MODULE``
flag, the environment variable ``SPARSE_ATTENTION_PLUGINS`` (modules separated by commas), and the entry points of
installed distributions in the group ``sparse_attention_bench.attentions``. Each loaded plugin is recorded with
the distribution that installed it and its version (``loaded_plugins``), which a run's metadata keeps.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import torch

from .errors import AttentionConfigError, error_line
from .registry import _FAMILIES, AttentionModule, Backend

ENTRY_POINT_GROUP = "sparse_attention_bench.attentions"
ENVIRONMENT_VARIABLE = "SPARSE_ATTENTION_PLUGINS"
# The module a plugin's family is built as, once, on the meta device, when the plugin loads
CONTRACT_DIM, CONTRACT_HEADS, CONTRACT_MAP = 64, 2, 56


class PluginError(AttentionConfigError):
    """A plugin that cannot be imported or breaks the contract: one line naming the plugin and the rule."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: its module, where it was named, what installed it, and what it registered."""

    module: str
    source: str  # '--plugin', the environment variable, or 'entry point NAME'
    distribution: str | None  # the installed distribution that holds the module, None for a module on sys.path
    version: str | None
    families: tuple[str, ...]  # families it registered
    backends: tuple[tuple[str, str], ...]  # (family, backend) it added to families it did not register

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "families": list(self.families), "backends": [list(b) for b in self.backends]}


_LOADED: dict[str, Plugin] = {}


def loaded_plugins() -> tuple[Plugin, ...]:
    """The plugins loaded in this process, in loading order."""
    return tuple(_LOADED.values())


def _registry_state() -> dict[str, tuple[type[AttentionModule], dict[str, Backend]]]:
    return {name: (cls, dict(cls.backends)) for name, cls in _FAMILIES.items()}


def _restore(state: Mapping[str, tuple[type[AttentionModule], dict[str, Backend]]]) -> None:
    """Put the registry back as ``state`` had it: families and each family's backends."""
    for name in list(_FAMILIES):
        if name not in state:
            del _FAMILIES[name]
    for name, (cls, backends) in state.items():
        _FAMILIES[name] = cls
        if cls.backends != backends:
            cls.backends.clear()
            cls.backends.update(backends)


def _distribution(module: str) -> tuple[str | None, str | None]:
    """The installed distribution that provides the module's top-level package, and its version."""
    names = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    if not names:
        return None, None
    return names[0], importlib.metadata.version(names[0])


def _check_family(name: str) -> None:
    """The contract a family must meet before anything runs: it builds with its defaults (on the meta device, so
    nothing is allocated), and counts its MACs at a map its options take."""
    try:
        with torch.device("meta"):
            module = _FAMILIES[name](CONTRACT_DIM, CONTRACT_HEADS, backend=_FAMILIES[name].reference_backend)
    except Exception as exc:  # noqa: BLE001 - any failure is the plugin's, reported in one line
        raise PluginError(f"family {name!r} does not build with its defaults (dim {CONTRACT_DIM}, "
                          f"{CONTRACT_HEADS} heads, on the meta device as the planner builds it): "
                          f"{error_line(exc)}") from exc
    try:
        module.check_map_size(CONTRACT_MAP, CONTRACT_MAP)
    except AttentionConfigError:
        return  # its defaults take other maps: the planner checks each case's map
    try:
        macs = module.macs(1, CONTRACT_MAP, CONTRACT_MAP)
    except NotImplementedError as exc:
        raise PluginError(f"family {name!r} has no count_macs (the harness needs analytic MACs)") from exc
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"family {name!r}: macs(1, {CONTRACT_MAP}, {CONTRACT_MAP}) raised "
                          f"{error_line(exc)}") from exc
    if not isinstance(macs, Mapping) or not macs or not all(
            isinstance(count, int) and count >= 0 for count in macs.values()):
        raise PluginError(f"family {name!r}: macs() must return a MacCount of non-negative ints by part, "
                          f"got {macs!r}")


def _registered(before: Mapping[str, tuple[type[AttentionModule], dict[str, Backend]]]
                ) -> tuple[list[str], list[tuple[str, str]]]:
    """What changed since ``before``: new families and backends added to families that were there; a name taken
    again raises ``PluginError`` (the caller restores the registry)."""
    families, backends = [], []
    for name, cls in _FAMILIES.items():
        if name not in before:
            families.append(name)
            continue
        old_cls, old_backends = before[name]
        if cls is not old_cls:
            raise PluginError(f"registers the family {name!r}, which already exists "
                              f"({old_cls.__module__}.{old_cls.__qualname__}); pick another name")
        for backend, record in cls.backends.items():
            if backend not in old_backends:
                if not isinstance(record, Backend) or record.name != backend:
                    raise PluginError(f"adds {name}.backends[{backend!r}] = {record!r}: a backend is an "
                                      f"attentions.Backend record under its own name")
                backends.append((name, backend))
            elif record is not old_backends[backend]:
                raise PluginError(f"replaces the backend {backend!r} of {name!r}, which already exists; "
                                  f"pick another name")
    return families, backends


def load_plugin(module: str, source: str = "--plugin") -> Plugin:
    """Import ``module`` (``module`` or ``module:function``, the function called after the import) and check what
    it registered; ``PluginError`` (the registry left as it was) if it breaks the contract. Loading a module a
    second time returns its first record."""
    name, colon, function = module.partition(":")
    if not name or not all(part.isidentifier() for part in name.split(".")) or (colon and not function.isidentifier()):
        raise PluginError(f"plugin {module!r} ({source}): not a module name (MODULE or MODULE:FUNCTION)")
    if module in _LOADED:
        return _LOADED[module]
    before, imported_before = _registry_state(), name in sys.modules
    try:
        try:
            imported = importlib.import_module(name)
            if function:
                getattr(imported, function)()
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's failure, whatever it is, is reported in one line
            raise PluginError(f"does not import: {error_line(exc)}") from exc
        families, backends = _registered(before)
        if not families and not backends:
            already = " (it was imported before, so its registrations could not be seen)" \
                if imported_before and not function else ""
            raise PluginError(f"registers nothing: no family (attentions.register) and no backend{already}")
        for family in families:
            _check_family(family)
    except PluginError as exc:
        _restore(before)
        raise PluginError(f"plugin {module!r} ({source}): {exc}") from exc.__cause__
    plugin = Plugin(module, source, *_distribution(name), tuple(families), tuple(backends))
    _LOADED[module] = plugin
    return plugin


def plugin_modules(flags: Iterable[str] = (), environ: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """(module, source) of the plugins named by ``--plugin`` flags and by the environment variable, in that
    order, once each."""
    named = [(module, "--plugin") for module in flags]
    named += [(part.strip(), ENVIRONMENT_VARIABLE) for part in environ.get(ENVIRONMENT_VARIABLE, "").split(",")
              if part.strip()]
    seen: set[str] = set()
    return [(module, source) for module, source in named if not (module in seen or seen.add(module))]


def load_plugins(flags: Iterable[str] = (), environ: Mapping[str, str] = os.environ,
                 entry_points: bool = True) -> list[Plugin]:
    """Load the plugins of the installed distributions' entry points (group ``ENTRY_POINT_GROUP``), then those
    named by ``--plugin`` flags and the environment variable. The first that fails raises ``PluginError``."""
    plugins = []
    if entry_points:
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            plugins.append(load_plugin(point.value, f"entry point {point.name!r}"))
    for module, source in plugin_modules(flags, environ):
        plugins.append(load_plugin(module, source))
    return plugins
