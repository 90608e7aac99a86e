"""The registry facts a report needs, recorded with each run so that its report never asks the live registry.

A sweep writes ``registry_snapshot()`` into its metadata as ``metadata["registry"]``; ``bench.schema.registry_facts``
reads it back (and, for runs written before that, the frozen ``bench/schema/registry_v1.json``).
This module may import torch and ``attentions``: it runs on the sweep's side, never the report's.
"""

from __future__ import annotations

import json
from typing import Any

import attentions
from attentions.models import list_models

from bench.core.profiles import DTYPES

SNAPSHOT_FORMAT = 1  # the version of the layout below; bench.schema.registry_facts reads this version


def registry_snapshot() -> dict[str, Any]:
    """A JSON-able description of today's registry, in registry order::

        {"format": 1,
         "families": [{"name", "backends": [...], "reference_backend", "options": {default options}}, ...],
         "models": [{"name", "display_name"}, ...],
         "element_sizes": {dtype name: bytes per element}}

    Default options go through JSON (a tuple reads as a list, a value JSON cannot hold as its repr), as the
    rows' own options do, so that a report compares like with like.
    """
    families = [{"name": name, "backends": list(info["backends"]), "reference_backend": info["reference_backend"],
                 "options": json.loads(json.dumps(info["options"], default=repr))}
                for name, info in attentions.list_attentions().items()]
    return {"format": SNAPSHOT_FORMAT, "families": families,
            "models": [{"name": name, "display_name": info["display_name"]} for name, info in list_models().items()],
            "element_sizes": {name: dtype.itemsize for name, dtype in DTYPES.items()}}
