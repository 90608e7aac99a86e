"""The families and backends the tests cover, read from the registry (``attentions.list_attentions``) at
collection, so that a family or backend registered later (in the package, or by a module that
``ATTENTION_EXTENSIONS`` names: see conftest.py) is covered without editing a test.

A plain module, not a conftest, as reference_helpers.py is: the test files import it by name.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

import attentions
import attentions.plugins as plugins
from attentions.registry import _FAMILIES

# The families the package itself registers (attentions/__init__.py imports them): the known answer of the one test
# that checks the package's own registrations. Every other test takes the families from the registry.
BUILT_IN_FAMILIES = ("full", "window", "deformable", "bra")


def families() -> list[str]:
    """Every registered family, in registration order."""
    return list(attentions.list_attentions())


def backends(family: str) -> list[str]:
    """Every backend of ``family``, in its order."""
    return list(attentions.list_attentions()[family]["backends"])


def cpu_backends(family: str, backward: bool = False, dtype: torch.dtype | None = None) -> list[str]:
    """The backends of ``family`` that run on this process's CPU (with a backward, in ``dtype``, if asked)."""
    return [backend for backend in backends(family)
            if attentions.backend_available(family, backend, "cpu", backward=backward, dtype=dtype)[0]]


def families_with_backend(backend: str) -> list[str]:
    """The families that have a backend of that name."""
    return [family for family in families() if backend in backends(family)]


def families_with_options(*options: str) -> list[str]:
    """The families whose constructors take every one of ``options``."""
    return [family for family in families() if set(options) <= set(attentions.family_options(family))]


def is_built_in(family: str) -> bool:
    """Whether the family's class lives in the package (a researcher's own family, from another module, is not)."""
    return _FAMILIES[family].__module__.split(".")[0] == "attentions"


@contextlib.contextmanager
def registry_kept() -> Iterator[None]:
    """Whatever is registered or loaded as a plugin inside, gone afterwards: the registry (families and each
    family's backends) and the loaded plugins as they were."""
    state, loaded = plugins._registry_state(), dict(plugins._LOADED)
    try:
        yield
    finally:
        plugins._restore(state)
        plugins._LOADED.clear()
        plugins._LOADED.update(loaded)
