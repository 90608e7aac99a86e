"""The registry facts a report needs (family, backend and model order, reference backends, default options,
display names, dtype sizes), read from the runs' metadata, never from the live registry.

A sweep records ``bench.suites.snapshot.registry_snapshot()`` as ``metadata["registry"]``. A run without one
(every run written before) is read with the frozen ``bench/schema/registry_v1.json``: the registry of
commit dfc3bb5, written once by ``python -c "import json; from bench.suites.snapshot import registry_snapshot;
print(json.dumps(registry_snapshot(), indent=2))" > bench/schema/registry_v1.json``; it is never regenerated.

A report of several runs takes one view of the facts (``facts_of_runs``): the snapshot of the newest run (the
latest ``started``; ties, and runs without a start time, in the order given, the later newer), then what the
older runs' snapshots (newest first) add, in the order first seen: families after its families, a family's
backends after its backends, models after its models, dtypes after its dtypes. Where two snapshots disagree
(a reference backend, a default, a display name), the newer one holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from bench.schema.errors import ResultsFormatError

FROZEN_SNAPSHOT = Path(__file__).resolve().parent / "registry_v1.json"
SNAPSHOT_FORMAT = 1  # the layout of bench.suites.snapshot.registry_snapshot that this module reads


@dataclass(frozen=True)
class Family:
    """An attention family as a report sees it: its backends in registry order, its reference, its defaults."""

    name: str
    backends: tuple[str, ...]
    reference_backend: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class RegistryFacts:
    """Families and models in registry order, and bytes per element of each dtype, for tables and plots."""

    families: Mapping[str, Family]
    models: Mapping[str, str]  # model name -> display name
    element_sizes: Mapping[str, int]

    @property
    def defaults(self) -> dict[str, Mapping[str, Any]]:
        """Each family's default options (what ``bench.analysis.variants`` labels variants against)."""
        return {name: family.options for name, family in self.families.items()}

    @property
    def backends(self) -> list[str]:
        """Every backend once, in registry order (the families' in turn)."""
        return list(dict.fromkeys(b for family in self.families.values() for b in family.backends))

    def family_rank(self, family: str) -> int:
        """The family's place in registry order; a family the facts do not know comes after all."""
        names = list(self.families)
        return names.index(family) if family in names else len(names)

    def family_order(self, families: Iterable[str]) -> list[str]:
        """The distinct ``families`` in registry order, unknown ones after, by name."""
        return sorted(dict.fromkeys(families), key=lambda f: (self.family_rank(f), f))

    def backend_rank(self, backend: str) -> tuple[int, str]:
        """The backend's place in registry order (the reference backends come first there); unknown ones after."""
        names = self.backends
        return (names.index(backend) if backend in names else len(names), backend)

    def model_rank(self, model: str) -> int:
        names = list(self.models)
        return names.index(model) if model in names else len(names)

    def display_name(self, model: str) -> str:
        return self.models.get(model, model)

    def element_size(self, dtype: str) -> int:
        if dtype not in self.element_sizes:
            raise ResultsFormatError(f"dtype {dtype!r} has no element size in the run's registry snapshot")
        return self.element_sizes[dtype]


def from_snapshot(snapshot: Mapping[str, Any], source: str = "registry snapshot") -> RegistryFacts:
    """The facts of one snapshot (``bench.suites.snapshot.registry_snapshot``'s layout); ResultsFormatError,
    naming ``source``, for another format or a snapshot missing a part."""
    if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT:
        found = snapshot.get("format") if isinstance(snapshot, Mapping) else type(snapshot).__name__
        raise ResultsFormatError(f"{source}: not a registry snapshot of format {SNAPSHOT_FORMAT} (found {found!r})")
    try:
        families = {f["name"]: Family(f["name"], tuple(f["backends"]), f["reference_backend"], dict(f["options"]))
                    for f in snapshot["families"]}
        models = {m["name"]: m["display_name"] for m in snapshot["models"]}
        sizes = {str(dtype): int(size) for dtype, size in snapshot["element_sizes"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsFormatError(f"{source}: a malformed registry snapshot ({type(exc).__name__}: {exc})") from exc
    return RegistryFacts(families, models, sizes)


def frozen_facts() -> RegistryFacts:
    """The facts of runs that recorded none: the frozen snapshot (see the module's docstring)."""
    return from_snapshot(json.loads(FROZEN_SNAPSHOT.read_text()), str(FROZEN_SNAPSHOT))


def merged(newest_first: list[RegistryFacts]) -> RegistryFacts:
    """One view of several snapshots: the first, then what each later one adds (see the module's docstring)."""
    families: dict[str, Family] = {}
    models: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for facts in newest_first:
        for name, family in facts.families.items():
            known = families.setdefault(name, family)
            extra = tuple(b for b in family.backends if b not in known.backends)
            if extra:
                families[name] = replace(known, backends=known.backends + extra)
        for mapping, more in ((models, facts.models), (sizes, facts.element_sizes)):
            for key, value in more.items():
                mapping.setdefault(key, value)
    return RegistryFacts(families, models, sizes)


def facts_of_runs(metadata: list[dict]) -> RegistryFacts:
    """The view of the facts for a report of the runs with these metadata (see the module's docstring)."""
    newest_first = sorted(range(len(metadata)), key=lambda i: (str(metadata[i].get("started") or ""), i),
                          reverse=True)
    views = []
    for i in newest_first:
        snapshot = metadata[i].get("registry")
        views.append(frozen_facts() if snapshot is None
                     else from_snapshot(snapshot, f"run {metadata[i].get('run_id')}: metadata 'registry'"))
    return merged(views) if views else frozen_facts()
