"""The data layer of the figures: pure functions from a results frame to the tidy table a plot draws (checked
numerically by the tests), and the texts of captions. Pandas only.

Rules the data follow:

- **Every measured row is a point.** Rows ``ok`` and ``noisy`` (timed, but with a spread beyond the
  device's limit) are drawn (``drawn``), with ``noisy`` saying which; where a figure shows the best backend
  of a case, the best is chosen among ok and noisy rows alike. Peak memory is no timing figure: a noisy
  row's memory is drawn like an ok row's.
- **Rows without a value are named where their point would be.** A case that has rows, but none with a
  drawn value (``mismatch``: wrong numbers; ``unsupported``, ``oom``, ``error``: no numbers), is named
  with its statuses (``unmeasured``). Cases never run are not shown at all.
- **Curves over resolution** follow one width per family (``main_widths``): the (dim, heads, batch,
  dtype) group with the most ok rows, named in the caption.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from bench.analysis.variants import with_reference, with_variants
from bench.schema.registry_facts import RegistryFacts
from bench.schema.columns import COMPILE_MODES, STATUSES
from bench.schema.labels import label_parts

PHASE_ORDER = ("fwd", "fwd+bwd")
DRAWN_STATUSES = ("ok", "noisy")  # rows whose values are drawn: a noisy row's timings hollow
WIDTH_COLUMNS = ["dim", "heads", "batch", "dtype"]
NUMERIC_COLUMNS = ["resolution", "batch", "dim", "heads", "topk", "latency_ms_median", "latency_ms_p20",
                   "latency_ms_p80", "peak_mem_mb", "gmacs", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"]


def prepared(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """The frame with a ``variant`` column (``bench.analysis.variants.with_variants``, against the facts'
    default options) and numeric measurements."""
    return numeric(frame if "variant" in frame.columns else with_variants(frame, facts.defaults))


def numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of the frame with its measurements (``NUMERIC_COLUMNS``) as numbers."""
    frame = frame.copy()
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _has_value(frame: pd.DataFrame) -> pd.Series:
    """Whether each row is drawn: status ok or noisy, with a positive median latency."""
    latency = pd.to_numeric(frame["latency_ms_median"], errors="coerce")
    return frame["status"].isin(DRAWN_STATUSES) & (latency > 0)


def drawn(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Rows whose values are drawn (``_has_value``); ``noisy`` says which are noisy."""
    frame = prepared(frame, facts)
    rows = frame[_has_value(frame)]
    return rows.assign(noisy=rows["status"] == "noisy")


def unmeasured(frame: pd.DataFrame, keys: list[str], position: str | None = None,
               shared: list[str] | None = None) -> pd.DataFrame:
    """The cases of ``frame`` (one per value of ``keys``) that have rows but none drawn, with ``status``:
    their rows' statuses ('oom', 'unsupported/oom'), for a plot to name them where their point would be.

    With ``position`` (a column such as 'gmacs'), each case also gets that column's value from any row
    sharing its ``shared`` keys (another backend or phase of it counted them), and cases without one
    are left out: they have no place on that axis.
    """
    if frame.empty:
        return pd.DataFrame(columns=keys + ["status"] + ([position] if position else []))
    cases = frame.assign(measured=_has_value(frame)).groupby(keys, sort=False, dropna=False).agg(
        measured=("measured", "any"), status=("status", joined_statuses))
    cases = cases[~cases["measured"]].reset_index()[keys + ["status"]]
    if position is None:
        return cases
    values = pd.to_numeric(frame[position], errors="coerce").groupby([frame[k] for k in shared]).max()
    cases = cases.merge(values.rename(position).reset_index(), on=shared, how="left")
    return cases[cases[position] > 0].reset_index(drop=True)


def drawn_nowhere(failed: pd.DataFrame, drawn_backends, facts: RegistryFacts) -> tuple[pd.DataFrame, str]:
    """Split the ``failed`` cases (``unmeasured``) of a figure: those of backends it draws somewhere, to
    name at their points, and a caption part naming the other backends once, with their statuses
    ('; without a value anywhere: triton (unsupported)'), rather than at every point."""
    absent = ~failed["backend"].isin(set(drawn_backends))
    statuses = failed[absent].groupby("backend")["status"].agg(lambda s: joined_statuses("/".join(s).split("/")))
    backends = backend_order(statuses.index, facts)
    names = [f"{', '.join(b for b in backends if statuses[b] == status)} ({status})"
             for status in dict.fromkeys(statuses[b] for b in backends)]
    return failed[~absent].copy(), f"; without a value anywhere: {'; '.join(names)}" if names else ""


def backend_rank(backend: str, facts: RegistryFacts) -> tuple:
    """A backend's place in legends and lists: its plain backend's in registry order (``facts.backend_rank``), then
    eager before the compile modes in their order (``COMPILE_MODES``), so that 'torch+compile' follows torch."""
    plain, mode = label_parts(backend)
    return (*facts.backend_rank(plain), COMPILE_MODES.index(mode) if mode in COMPILE_MODES else len(COMPILE_MODES),
            mode)


def backend_order(backends, facts: RegistryFacts) -> list[str]:
    """The distinct ``backends`` (labels) in ``backend_rank``'s order."""
    return sorted(set(backends), key=lambda backend: backend_rank(backend, facts))


def joined_statuses(statuses) -> str:
    """Distinct statuses in the order of ``bench.schema.columns.STATUSES``: 'unsupported/oom'."""
    return "/".join(sorted(set(statuses), key=status_rank))


def status_rank(status: str) -> tuple:
    return (STATUSES.index(status) if status in STATUSES else len(STATUSES), status)


def main_widths(frame: pd.DataFrame) -> dict[str, tuple]:
    """Per family, its main (dim, heads, batch, dtype): the group with the most drawn rows (ok or noisy: a
    noisy row is drawn, hollow, so a noisy re-measurement does not move a family's curves to another width).

    Ties go to the group with more rows of any status, then more resolutions, then the smaller dim.
    A family without drawn rows gets the group with the most rows.
    """
    frame = numeric(frame)
    out: dict[str, tuple] = {}
    for family, rows in frame.groupby("family", sort=False):
        stats = rows.assign(is_drawn=rows["status"].isin(("ok", "noisy"))).groupby(WIDTH_COLUMNS).agg(
            n_drawn=("is_drawn", "sum"), n=("status", "size"), n_res=("resolution", "nunique")).reset_index()
        best = stats.sort_values(["n_drawn", "n", "n_res", "dim"], ascending=[False, False, False, True]).iloc[0]
        out[family] = tuple(_plain(best[c]) for c in WIDTH_COLUMNS)
    return out


def at_main_width(frame: pd.DataFrame, widths: dict[str, tuple] | None = None) -> pd.DataFrame:
    """The rows (any status) at their family's main width."""
    frame = numeric(frame)
    widths = main_widths(frame) if widths is None else widths
    if frame.empty:
        return frame
    own = frame["family"].map(widths)
    keep = [w == tuple(_plain(v) for v in values) if isinstance(w, tuple) else False
            for w, values in zip(own, frame[WIDTH_COLUMNS].itertuples(index=False))]
    return frame[keep]


def representative_variants(frame: pd.DataFrame, facts: RegistryFacts) -> dict[str, str]:
    """Per family, the variant its curves over resolution show: the default configuration (the label
    that is the family's name alone) when the frame has it, else the variant with the most rows."""
    out = {}
    for family, rows in prepared(frame, facts).groupby("family", sort=False):
        counts = rows["variant"].value_counts()
        out[family] = family if family in counts.index else str(counts.index[0])
    return out


def resolution_table(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Data of latency_vs_resolution, memory_vs_resolution and scaling.

    Drawn rows (ok, noisy) at each family's main width, one per (phase, family, variant, backend,
    resolution): median / p20 / p80 latency in ms, peak memory in MB, and ``noisy``.
    """
    frame = prepared(frame, facts)
    rows = at_main_width(drawn(frame, facts), main_widths(frame))
    keys = ["phase", "family", "variant", "backend", "resolution"]
    values = ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb"]
    if rows.empty:
        return pd.DataFrame(columns=keys + WIDTH_COLUMNS + values + ["noisy"])
    table = rows.groupby(keys + WIDTH_COLUMNS, sort=False, dropna=False).agg(
        **{v: (v, "median") for v in values}, noisy=("noisy", "any")).reset_index()
    return table.sort_values(keys).reset_index(drop=True)


def representative_rows(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """The rows (any status) that curves over resolution follow: each family's main width and
    representative variant."""
    frame = prepared(frame, facts)
    rows = at_main_width(frame, main_widths(frame))
    return rows[rows["variant"] == rows["family"].map(representative_variants(frame, facts))]


def scaling_table(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Data of the headline scaling figure: per family (its representative variant), phase and
    resolution, the drawn row (ok or noisy) of the fastest backend (``metric`` latency) and of the
    leanest backend (``metric`` memory), with that backend's name. ``noisy``: the value is a noisy
    row's timing (a memory value never is: peak memory is no timing figure)."""
    table = resolution_table(frame, facts)
    table = table[table["variant"] == table["family"].map(representative_variants(frame, facts))]
    out = []
    for metric, column in (("latency", "latency_ms_median"), ("memory", "peak_mem_mb")):
        rows = table[table[column].notna() & (table[column] > 0)]
        if rows.empty:
            continue
        best = rows.loc[rows.groupby(["phase", "family", "resolution"])[column].idxmin()]
        out.append(best.assign(metric=metric, value=best[column], noisy=best["noisy"] & (metric == "latency")))
    columns = ["metric", "phase", "family", "variant", "backend", "resolution", "value", "latency_ms_p20",
               "latency_ms_p80", "noisy"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def gmacs_table(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Data of gmacs_vs_latency: per (phase, variant, width, resolution), the fastest drawn row (ok or
    noisy: ``noisy`` says which) with positive GMACs and its backend (every width: compute is
    comparable across them)."""
    rows = drawn(frame, facts)
    rows = rows[rows["gmacs"].notna() & (rows["gmacs"] > 0)]
    columns = ["phase", "family", "variant", "backend", "resolution", "dim", "heads", "batch", "dtype", "gmacs",
               "latency_ms_median", "noisy"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    best = rows.loc[rows.groupby(["phase", "variant", *WIDTH_COLUMNS, "resolution"])["latency_ms_median"].idxmin()]
    return best[columns].reset_index(drop=True)


def speedup_table(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Every row with its family's reference-backend row for the same case, and the speedup.

    ``speedup`` = the paired speedup over the reference where the run timed them in the same rounds
    (with its interval in ``speedup_low`` / ``speedup_high``), else reference median latency / the
    row's median latency; only when the row and its reference were measured and passed the error
    check (ok or noisy), otherwise NaN. ``cell_status`` is 'ok', 'noisy', the row's own status
    (mismatch, oom, ...), 'ref <status>' when the reference row has no valid latency, or 'no
    reference' when it was not run. ``label`` reads '1.35×' or the status.
    """
    table = with_reference(prepared(frame, facts))
    drawable = table["status"].isin(DRAWN_STATUSES)
    reference_ok = table["reference_status"].isin(DRAWN_STATUSES)
    missing = pd.Series(np.nan, index=table.index)
    paired, low, high = (table.get(c, missing) for c in ("speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"))
    timed = pd.to_numeric(table["reference_latency_ms"], errors="coerce") / table["latency_ms_median"]
    valid = drawable & reference_ok
    table["speedup"] = paired.where(paired.notna(), timed).where(valid)
    table["speedup_low"], table["speedup_high"] = low.where(valid), high.where(valid)
    table["cell_status"] = np.where(~drawable, table["status"],
                                    np.where(table["reference_status"].isna(), "no reference",
                                             np.where(~reference_ok, "ref " + table["reference_status"].fillna(
                                                 "").astype(str), table["status"])))
    table["label"] = [f"{s:.2f}×" if np.isfinite(s) else status
                      for s, status in zip(table["speedup"], table["cell_status"])]
    table.loc[table["cell_status"].isin(DRAWN_STATUSES) & table["speedup"].isna(), "label"] = "n/a"
    return table


def model_table_data(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of model_throughput: model-suite rows that are ok or noisy, with GMACs per image, images/s
    and the family of their attention ('mixed' for four choices)."""
    rows = frame[frame["status"].isin(DRAWN_STATUSES)].copy()
    for column in ("gmacs_per_image", "throughput", "resolution", "batch"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    rows = rows[(rows["gmacs_per_image"] > 0) & (rows["throughput"] > 0)]
    rows["family"] = [a if "," not in a else "mixed" for a in rows["attention"].astype(str)]
    rows["noisy"] = rows["status"] == "noisy"
    return rows[["phase", "resolution", "batch", "dtype", "model", "attention", "family", "backend",
                 "gmacs_per_image", "throughput", "noisy"]].reset_index(drop=True)


def _plain(value):
    """numpy scalars to Python ones (ints stay ints), so width tuples compare and print plainly."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def width_text(width: tuple | None) -> str:
    if width is None:
        return ""
    dim, heads, batch, dtype = width
    return f"C={dim}, {heads} heads, batch {batch}, {dtype}"


def widths_caption(widths: dict[str, tuple], families: pd.Series, facts: RegistryFacts) -> str:
    """'C=64, 2 heads, batch 1, float32', or per family when the families differ."""
    groups: dict[tuple, list[str]] = {}
    for family in facts.family_order(families):
        if family in widths:
            groups.setdefault(widths[family], []).append(family)
    if len(groups) == 1:
        return width_text(next(iter(groups)))
    return "; ".join(f"{', '.join(fams)}: {width_text(w)}" for w, fams in groups.items())


def context(frame: pd.DataFrame) -> str:
    """'AMD EPYC (profile cpu)': the device the rows were measured on."""
    parts = []
    for column, template in (("device_name", "{}"), ("gpu_profile", "profile {}")):
        if column in frame.columns:
            values = [str(v) for v in frame[column].dropna().unique()]
            if values:
                parts.append(template.format("/".join(values)))
    if len(parts) == 2:
        return f"{parts[0]} ({parts[1]})"
    return parts[0] if parts else ""


def phase_order(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["phase"]))
    return [p for p in PHASE_ORDER if p in present] + sorted(p for p in present if p not in PHASE_ORDER)


def family_of(variant: str) -> str:
    return re.split(r"[ (]", variant, maxsplit=1)[0]


def tags(variant: str) -> str:
    """A variant's options without its family: 'bra (topk=4, avgpool)' -> 'topk=4, avgpool'."""
    rest = variant[len(family_of(variant)):].strip()
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest or family_of(variant)


def natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]
