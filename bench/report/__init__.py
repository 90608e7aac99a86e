"""Reports from result files alone: tables and plots, each registered once, and the report folder.

Importing the package imports every content module (the general and the BRA tables and plots), so that the
catalog (``bench.report.catalog``) is whole wherever it is read. Nothing here imports torch, ``attentions``
or the measuring packages: the registry facts come from the runs' metadata (``bench.schema.registry_facts``).
"""

from bench.report import plots, plots_bra, tables, tables_bra  # noqa: F401  (they register their content)
from bench.report.build import build_report

__all__ = ["build_report"]
