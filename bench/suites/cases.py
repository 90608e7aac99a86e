"""Benchmark cases and the sweeps that generate them.

A ``Case`` is one measurement: family, backend, family options, batch, resolution (H = W, in
tokens), dim, heads, dtype, device, phase and compile mode. A ``SweepBlock`` is a grid: its shapes (resolution,
dim, heads, plus options tied to that shape) crossed with families, backends, batches, dtypes,
phases, compile modes and *option axes*. An option axis is a list of option bundles (dicts); it is crossed only
with the families that have every option of the bundle (per ``attentions.family_options``), so
full attention is not repeated once per topk. Option values may be ``Rule`` objects, resolved
per shape (for example n_win from the resolution).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import attentions

from bench.schema.columns import EAGER
from bench.schema.labels import backend_label, case_label, configuration_name

PHASES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Rule:
    """An option value computed from the resolution and the case's other options."""

    description: str
    compute: Callable[[int, dict[str, Any]], Any]

    def __repr__(self) -> str:
        return f"Rule({self.description})"


@dataclass(frozen=True)
class Case:
    """One measurement of the attention suite (see the module's docstring)."""

    suite: ClassVar[str] = "attentions"  # the suite that runs it (bench.suites.SUITES)

    family: str
    backend: str
    options: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs, JSON-serialisable values
    batch: int
    resolution: int
    dim: int
    heads: int
    dtype: str
    device: str
    phase: str
    compile: str = EAGER  # torch.compile's mode, or eager

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def options_json(self) -> str:
        return json.dumps(self.options_dict, sort_keys=True)

    @property
    def key(self) -> str:
        """Stable identity of the case, used to skip completed cases on resume."""
        return with_compile_mode("|".join([self.family, self.backend, self.options_json, str(self.batch),
                                           str(self.resolution), str(self.dim), str(self.heads), self.dtype,
                                           self.device, self.phase]), self.compile)

    def effective_options(self) -> dict[str, Any]:
        """Family defaults overlaid with the case's options: what the module is built with."""
        return {**attentions.family_options(self.family), **self.options_dict}

    def label(self) -> str:
        """A readable one-line description, e.g. 'bra (topk=1)/sdpa+compile 14² C64 h2 b2 float32 fwd'."""
        return case_label(config_name(self.family, self.options_dict), backend_label(self.backend, self.compile),
                          self.resolution, self.dim, self.heads, self.batch, self.dtype, self.phase)


def with_compile_mode(key: str, mode: str) -> str:
    """A case key with its compile mode: an eager case's key is the key it had before the mode was part of a case
    (so runs of then resume and compare), a compiled one's ends in '|compile=<mode>'."""
    return key if mode == EAGER else f"{key}|compile={mode}"


def config_name(family: str, options: dict[str, Any]) -> str:
    """A configuration's readable name (``bench.schema.labels.configuration_name``) against the registry's
    defaults of its family (none for a family it does not know)."""
    try:
        defaults = attentions.family_options(family)
    except attentions.AttentionConfigError:
        defaults = {}
    return configuration_name(family, options, defaults)


@dataclass
class SweepBlock:
    """One grid of cases; the sweep is the union of its blocks."""

    name: str
    shapes: list[tuple[int, int, int, dict[str, Any]]]  # (resolution, dim, heads, shape-tied options)
    option_axes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    families: list[str] | None = None  # None: every registered family
    backends: list[str] | None = None  # None: every backend of each family; else those the family has
    backends_fixed: bool = False  # a baseline's block: --backends leaves its backends as they are
    batches: list[int] = field(default_factory=lambda: [1])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    compile_modes: list[str] = field(default_factory=lambda: [EAGER])

    def cases(self, device: str, common_options: dict[str, dict[str, Any]] | None = None) -> list[Case]:
        """Expand the grid. ``common_options`` maps family -> options applied to all its cases."""
        common_options = common_options or {}
        families = self.families or list(attentions.list_attentions())
        out: list[Case] = []
        for family in families:
            known = attentions.family_options(family)
            offered = list(attentions.list_attentions()[family]["backends"])
            backends = [b for b in self.backends if b in offered] if self.backends else offered
            axes = [bundles for bundles in self.option_axes.values()
                    if bundles and all(set(b) <= set(known) for b in bundles)]
            for resolution, dim, heads, shape_options in self.shapes:
                for bundle_choice in itertools.product(*axes):
                    options: dict[str, Any] = {k: v for k, v in common_options.get(family, {}).items()}
                    for bundle in bundle_choice:
                        options.update(bundle)
                    options.update({k: v for k, v in shape_options.items() if k in known})
                    # Drop options equal to the family's default: one configuration, one case key.
                    options = {k: v for k, v in resolve_rules(options, resolution).items() if known[k] != v}
                    for backend, batch, dtype, phase, mode in itertools.product(
                            backends, self.batches, self.dtypes, self.phases, self.compile_modes):
                        out.append(Case(family, backend, tuple(sorted(options.items())), batch, resolution,
                                        dim, heads, dtype, device, phase, mode))
        return out


def resolve_rules(options: dict[str, Any], resolution: int) -> dict[str, Any]:
    """Replace Rule values by their value for this resolution (rules see the plain options)."""
    plain = {k: v for k, v in options.items() if not isinstance(v, Rule)}
    for name, value in options.items():
        if isinstance(value, Rule):
            plain[name] = value.compute(resolution, plain)
    return plain


def unique_cases(blocks: list[SweepBlock], device: str,
                 common_options: dict[str, dict[str, Any]] | None = None) -> list[Case]:
    """All cases of the blocks, in order, without duplicates."""
    seen: dict[str, Case] = {}
    for block in blocks:
        for case in block.cases(device, common_options):
            seen.setdefault(case.key, case)
    return list(seen.values())


@dataclass(frozen=True)
class ModelCase:
    """One measurement of the model suite: a backbone of ``attentions.models`` with an attention choice
    (a family for every stage, or four comma-separated) and backend, at an image size in pixels."""

    suite: ClassVar[str] = "models"  # the suite that runs it (bench.suites.SUITES)

    model: str
    attention: str
    backend: str
    batch: int
    resolution: int
    dtype: str
    device: str
    phase: str
    compile: str = EAGER  # torch.compile's mode for the whole backbone, or eager

    @property
    def options_dict(self) -> dict[str, Any]:
        """The ``build_model`` options besides the backend. auto_pad pads only the maps that BRA's regions
        do not divide (stage maps of 512² and 1024² inputs); at 224² it changes nothing."""
        names = self.attention.split(",")
        return {"attention": names[0] if len(names) == 1 else names, "auto_pad": True}

    @property
    def options_json(self) -> str:
        return json.dumps(self.options_dict, sort_keys=True)

    @property
    def key(self) -> str:
        """Stable identity of the case, used to skip completed cases on resume."""
        return with_compile_mode("|".join([self.model, self.attention, self.backend, str(self.batch),
                                           str(self.resolution), self.dtype, self.device, self.phase]), self.compile)

    def label(self) -> str:
        return (f"{self.model}[{self.attention}]/{backend_label(self.backend, self.compile)} {self.resolution}px "
                f"b{self.batch} {self.dtype} {self.phase}")
