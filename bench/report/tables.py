"""Paper tables from result rows, rendered as markdown, LaTeX (booktabs) and CSV.

The markdown and CSV keep every column; the LaTeX is the paper's version: the columns marked for it,
pure ASCII, in ``table`` floats of at most a page that fit the line width (see ``Table.to_latex``).

Rules every table follows:
- a short caption, and a note: what the columns shown mean, units and conventions (GMACs are the papers'
  "FLOPs"; HW FLOPs = 2 × MACs);
- the best value of each column is in bold, within each block of rows (a resolution and phase);
- rows whose status is not ok keep their place and show the status instead of numbers;
- a mismatch row never shows a speedup: it failed the error check against the reference;
- a noisy row shows its latency marked NOISY, never in bold and never in a ratio of timings; its peak memory
  and memory ratios stay (peak memory is no timing figure);
- only cases that ran are rows: a combination the sweep never ran has no row of "—";
- a speedup over the reference is the paired one (median of per-round ratios, timed in the same
  rounds) with its 95% confidence interval where the run has it, else the ratio of medians;
- an error recorded as inf (NaN/inf in a backend's output or gradients) reads "inf" and is never in bold.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

import torch

import attentions
from attentions.models import list_models

from bench.core.profiles import DTYPES
from bench.schema.results import MEASURED_STATUSES, atomic_write
from bench.analysis.variants import with_backend, with_dense, with_full_attention, with_reference, with_variants

MB = 2 ** 20
MEMORY_STATUSES = ("ok", "noisy")  # rows whose peak memory stands: noise is in the timing, not in the memory
CONVENTIONS = ("GMACs are multiply-adds counted by fvcore, the papers' \"FLOPs\"; hardware FLOPs = 2 × MACs "
               "(forward+backward: 3 × the forward). Latency is the median over timed rounds with the p20–p80 "
               "spread; memory is the peak allocated during one pass above what was allocated before it.")


@dataclass
class Column:
    """A table column: header, how to format a value, which end is best (for bold), and what it means
    (for the table's note, where the column is shown).

    For the LaTeX (paper) table: ``paper=False`` leaves the column out (the markdown and CSV keep it);
    ``heading=True`` shows its value, constant within a block, once in a heading row above the block
    instead of in a column; ``span`` is a header over this and the neighbouring columns of the same
    span, and is left out of this column's own header ('fwd img/s' under 'fwd' reads 'img/s').
    """

    header: str
    format: Callable[[float], str] = lambda v: f"{v:.3g}"
    best: str | None = None  # "min", "max" or None
    paper: bool = True
    heading: bool = False
    span: str | None = None
    note: str = ""

    def latex_header(self) -> str:
        return self.header.removeprefix(self.span).strip() if self.span else self.header


@dataclass(frozen=True)
class Cell:
    """A number shown as custom text (e.g. a median with its spread); the number decides bold."""

    value: float
    text: str


def _number(cell: object) -> float | None:
    value = cell.value if isinstance(cell, Cell) else cell
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    return None


# What a LaTeX table needs besides the article class: booktabs for its rules, graphicx to shrink it.
LATEX_PACKAGES = ("booktabs", "graphicx")
# Lines (rows, and a heading or rule per block) in one LaTeX float: a page of \small rows under a
# caption, on A4 or US letter with 2.5 cm margins. The note takes a line per NOTE_CHARS of it.
PAGE_LINES = 54
NOTE_CHARS = 110


@dataclass
class Table:
    """Rows of cells in blocks (bold and rules per block), rendered as markdown, LaTeX and CSV."""

    name: str
    caption: str  # short: a title
    columns: list[Column]
    rows: list[list[object]] = field(default_factory=list)  # float, Cell, str (label or status) or None
    blocks: list[int] = field(default_factory=list)          # block id per row, for bold and rules
    note: str = ""  # after the shown columns' notes: blocks, bold, conventions

    def full_note(self, columns: list[Column]) -> str:
        """The note under a rendering with ``columns``: their meanings, then the table's own note."""
        return " ".join([c.note for c in columns if c.note] + [self.note]).strip()

    def frame(self) -> pd.DataFrame:
        """The table's values (numbers as numbers) for CSV."""
        return pd.DataFrame([[c.value if isinstance(c, Cell) else c for c in row] for row in self.rows],
                            columns=[c.header for c in self.columns])

    def best_cells(self) -> set[tuple[int, int]]:
        cells = set()
        for col, column in enumerate(self.columns):
            if column.best is None:
                continue
            for block in set(self.blocks):
                values = [(r, _number(row[col])) for r, row in enumerate(self.rows) if self.blocks[r] == block]
                values = [(r, v) for r, v in values if v is not None and math.isfinite(v)]  # inf: never the best
                if len(values) < 2:
                    continue
                target = (min if column.best == "min" else max)(v for _, v in values)
                cells.update((r, col) for r, v in values if v == target)
        return cells

    def texts(self) -> list[list[str]]:
        def text(cell: object, column: Column) -> str:
            if isinstance(cell, str):
                return cell
            if isinstance(cell, Cell):
                return cell.text
            return "—" if _number(cell) is None else column.format(cell)
        return [[text(cell, column) for cell, column in zip(row, self.columns)] for row in self.rows]

    def to_markdown(self) -> str:
        bold = self.best_cells()
        lines = [f"**{self.caption}.** {self.full_note(self.columns)}".rstrip(), "",
                 "| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        for r, row in enumerate(self.texts()):
            cells = [f"**{t}**" if (r, c) in bold else t for c, t in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def pages(self, note: str) -> list[list[int]]:
        """The rows of each LaTeX float: whole blocks while they fit PAGE_LINES (a line per row, one per
        block for its rule or heading; on the first page, ``note``'s lines too); a longer block is cut."""
        note_lines = math.ceil(len(note) / NOTE_CHARS)
        pages: list[list[int]] = []
        lines = 0
        for _, run in itertools.groupby(range(len(self.rows)), key=lambda r: self.blocks[r]):
            run = list(run)
            if pages and lines + len(run) + 1 <= PAGE_LINES - (note_lines if len(pages) == 1 else 0):
                pages[-1] += run
                lines += len(run) + 1
                continue
            while run:  # new pages, each with as much of the block as fits
                size = PAGE_LINES - (0 if pages else note_lines) - 1
                pages.append(run[:size])
                run = run[size:]
                lines = len(pages[-1]) + 1
        return pages or [[]]

    def to_latex(self) -> str:
        """The paper's version: the ``paper`` columns, ASCII only, booktabs rules, one ``table`` float per
        page of rows (``pages``), the first with the caption, a label ``tab:<name>`` and the note below
        the table, the others captioned '(continued)' and labelled ``tab:<name>:<n>``. A table wider
        than the line is shrunk to it (never enlarged). Columns without a value are left out. The first
        line names the packages it needs."""
        bold, texts = self.best_cells(), self.texts()
        shown = [c for c, column in enumerate(self.columns) if column.paper and not column.heading
                 and any(row[c] is not None for row in self.rows)]
        headed = [c for c, column in enumerate(self.columns) if column.paper and column.heading]
        headings = [", ".join(f"{self.columns[c].header} {row[c]}" for c in headed) for row in texts]
        align = "".join("r" if any(_number(row[c]) is not None for row in self.rows) else "l" for c in shown)
        note = self.full_note([self.columns[c] for c in shown + headed])
        out = [f"% requires: {', '.join(LATEX_PACKAGES)}",
               f"% The paper's columns; {self.name}.md and {self.name}.csv hold them all."]
        for page, rows in enumerate(self.pages(note)):
            caption = self.caption if page == 0 else f"{self.caption} (continued)"
            label = f"tab:{self.name}" if page == 0 else f"tab:{self.name}:{page + 1}"
            out += ["\\begin{table}[tbp]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{4pt}",
                    f"\\caption{{{latex_escape(caption)}}}",
                    f"\\label{{{label}}}", f"\\sbox0{{\\begin{{tabular}}{{{align}}}", "\\toprule",
                    *self._latex_header(shown), "\\midrule"]
            for previous, r in zip([None, *rows], rows):
                new_heading = bool(headed) and (previous is None or headings[r] != headings[previous])
                if previous is not None and (new_heading or self.blocks[r] != self.blocks[previous]):
                    out.append("\\midrule")
                if new_heading:
                    out.append(f"\\multicolumn{{{len(shown)}}}{{l}}{{\\emph{{{latex_escape(headings[r])}}}}} \\\\")
                out.append(" & ".join(f"\\textbf{{{latex_escape(texts[r][c])}}}" if (r, c) in bold
                                      else latex_escape(texts[r][c]) for c in shown) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}}",
                    "\\ifdim\\wd0>\\linewidth \\resizebox{\\linewidth}{!}{\\usebox0}\\else \\usebox0\\fi"]
            if page == 0 and note:
                out += ["\\par\\smallskip", f"{{\\footnotesize\\raggedright {latex_escape(note)}\\par}}"]
            out.append("\\end{table}")
        return "\n".join(out) + "\n"

    def _latex_header(self, shown: list[int]) -> list[str]:
        """The header row, under a row of spans (with their rules) when some columns have one."""
        columns = [self.columns[c] for c in shown]
        lines = []
        if any(column.span for column in columns):
            cells, rules, first = [], [], 1
            for span, group in itertools.groupby(column.span for column in columns):
                width = len(list(group))
                if span is None:
                    cells += [""] * width
                else:
                    cells.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(span)}}}")
                    rules.append(f"\\cmidrule(lr){{{first}-{first + width - 1}}}")
                first += width
            lines += [" & ".join(cells) + " \\\\", " ".join(rules)]
        return lines + [" & ".join(latex_escape(column.latex_header()) for column in columns) + " \\\\"]

    def write(self, out_dir: Path) -> list[Path]:
        """``<name>.md``, ``.tex`` and ``.csv`` in ``out_dir``, each written whole or not at all (``atomic_write``)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{self.name}.md", out_dir / f"{self.name}.tex", out_dir / f"{self.name}.csv"]
        for path, text in zip(paths, (self.to_markdown(), self.to_latex())):
            with atomic_write(path) as tmp:
                tmp.write_text(text)
        with atomic_write(paths[2]) as tmp:
            self.frame().to_csv(tmp, index=False)
        return paths


# Characters LaTeX reads as commands, and the non-ASCII ones the tables use, as LaTeX.
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"$<$", ">": r"$>$", "|": r"$|$",
                  "×": r"$\times$", "²": r"$^2$", "³": r"$^3$", "–": "--", "—": "---", "−": r"$-$",
                  "≤": r"$\leq$", "≥": r"$\geq$", "±": r"$\pm$", "‖": r"$\|$", "→": r"$\to$", "÷": r"$\div$",
                  "·": r"$\cdot$", "…": r"\dots{}", "µ": r"$\mu$", "°": r"$^\circ$", "\u00a0": "~"}


def _latex_char(ch: str) -> str:
    """One character as LaTeX: escaped, replaced, or (another non-ASCII one) its ASCII letters, or '?'."""
    if ch in LATEX_SPECIALS:
        return LATEX_SPECIALS[ch]
    if ch.isascii():
        return ch
    return unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode() or "?"


def latex_escape(text: str) -> str:
    """``text`` as pure-ASCII LaTeX: specials escaped, "quotes" as ``quotes'', symbols as math."""
    return re.sub(r'"([^"]*)"', r"``\1''", "".join(_latex_char(ch) for ch in text))


def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def _latency(row: pd.Series) -> Cell:
    text = f"{row['latency_ms_median']:.3g} [{row['latency_ms_p20']:.3g}–{row['latency_ms_p80']:.3g}]"
    return Cell(row["latency_ms_median"], text)


def _latency_or_status(row: pd.Series) -> object:
    """The latency of an ok row; of a noisy or mismatch row as marked text (never bold); else the status."""
    if row["status"] == "ok":
        return _latency(row)
    if row["status"] in MEASURED_STATUSES:
        return f"{_latency(row).text} {row['status'].upper()}"
    return row["status"].upper()


def _memory(row: pd.Series) -> float | None:
    """The row's peak memory, where it stands (``MEMORY_STATUSES``)."""
    return _value(row["peak_mem_mb"]) if row["status"] in MEMORY_STATUSES else None


def _memory_ratio(row: pd.Series, partner: str) -> float | None:
    """Peak memory over the ``partner``'s (a ``bench.analysis.variants`` prefix: reference, full), where both stand."""
    if row["status"] not in MEMORY_STATUSES or row[f"{partner}_status"] not in MEMORY_STATUSES:
        return None
    memory, partner_memory = row["peak_mem_mb"], row[f"{partner}_peak_mem_mb"]
    return memory / partner_memory if partner_memory > 0 and math.isfinite(memory / partner_memory) else None


def _speedup(row: pd.Series) -> Cell | None:
    """The speedup over the reference with its confidence interval, when the run paired them."""
    value = _value(row["reference_speedup"])
    if value is None:
        return None
    low, high = _value(row.get("reference_speedup_low")), _value(row.get("reference_speedup_high"))
    return Cell(value, _ratio(value) if low is None else f"{_ratio(value)} [{low:.2f}–{high:.2f}]")


def params_millions(row: pd.Series) -> float:
    """Parameter count from the recorded parameter bytes and the dtype's element size."""
    element = torch.empty((), dtype=DTYPES[row["dtype"]]).element_size()
    return row["param_mb"] * MB / element / 1e6


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    order = {"full": 0, "window": 1, "deformable": 2, "bra": 3}
    return frame.assign(_family_order=frame["family"].map(lambda f: order.get(f, 9))).sort_values(
        ["phase", "resolution", "dim", "_family_order", "variant", "backend"], kind="stable")


def _value(value: float) -> float | None:
    return None if pd.isna(value) else value


def _case_columns() -> list[Column]:
    """The columns naming an attention case; in LaTeX the resolution, width and phase head their blocks."""
    return [Column("Variant"), Column("Backend"), Column("Res.", heading=True), Column("C/heads", heading=True),
            Column("Phase", heading=True)]


def main_table(frame: pd.DataFrame) -> Table:
    """(a) Every variant × backend × resolution: cost, speed, memory, and ratios to full and to the reference."""
    rows = with_full_attention(with_reference(with_variants(frame)))
    table = Table("main", "Attention variants: cost, latency and memory, against full attention and the reference",
                  [*_case_columns(), Column("Params (M)", lambda v: f"{v:.3f}", paper=False),
                   Column("GMACs", lambda v: f"{v:.3g}", "min"), Column("Latency ms", best="min"),
                   Column("Img/s", lambda v: f"{v:.4g}", "max", paper=False, note="Img/s: images per second."),
                   Column("Mem MB", lambda v: f"{v:.4g}", "min", note="Mem MB: peak memory."),
                   Column("× full", _ratio, "max", note="× full: speedup over full attention on the same backend."),
                   Column("Mem/full", _ratio, "min", paper=False, note="Mem/full: peak memory over full attention's."),
                   Column("× ref", _ratio, "max", note="× ref: speedup over the family's reference backend."),
                   Column("Mem/ref", _ratio, "min", paper=False, note="Mem/ref: peak memory over the reference's.")],
                  note="Best per column within each resolution, width and phase in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    for _, row in _sorted(rows).iterrows():
        ok = row["status"] == "ok"
        latency = _latency_or_status(row)
        versus_full = row["family"] != "full"
        versus_reference = row["backend"] != row["reference_backend"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            params_millions(row) if not pd.isna(row["param_mb"]) else None, _value(row["gmacs"]), latency,
            _value(row["throughput"]) if ok else None, _memory(row),
            _value(row["full_speedup"]) if versus_full else None,
            _memory_ratio(row, "full") if versus_full else None,
            _value(row["reference_speedup"]) if versus_reference else None,
            _memory_ratio(row, "reference") if versus_reference else None])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


def _stage1_width(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at the family's most common (dim, heads): ablations compare like with like."""
    if frame.empty:
        return frame
    width = frame.groupby(["dim", "heads"]).size().idxmax()
    return frame[(frame["dim"] == width[0]) & (frame["heads"] == width[1])]


def ablation_table(frame: pd.DataFrame, axis: str) -> Table | None:
    """(b) BRA ablation over ``axis`` (topk or kv_downsample_mode) × resolution: GMACs, latency, memory."""
    bra = _stage1_width(frame[frame["family"] == "bra"])
    if axis == "topk":
        bra = bra[bra["kv_downsample_mode"] == "identity"]
    else:
        common_topk = bra["topk"].mode()
        bra = bra[bra["topk"] == common_topk.iloc[0]] if len(common_topk) else bra
    if bra[axis].nunique() < 2:
        return None
    resolutions = sorted(bra["resolution"].unique())
    columns = [Column("Phase", heading=True), Column("Backend", heading=True),
               Column(axis.replace("kv_downsample_mode", "kv mode"))]
    for r in resolutions:
        columns += [Column(f"{r}² GMACs", lambda v: f"{v:.3g}", "min", span=f"{r}²"),
                    Column(f"{r}² ms", best="min", span=f"{r}²"),
                    Column(f"{r}² MB", lambda v: f"{v:.4g}", "min", span=f"{r}²")]
    dim, heads = bra["dim"].iloc[0], bra["heads"].iloc[0]
    what = "top-k routed regions" if axis == "topk" else "kv downsampling mode"
    table = Table(f"bra_{'topk' if axis == 'topk' else 'kv_modes'}",
                  f"BRA ablation over the {what} (C {dim}, {heads} heads, batch {bra['batch'].iloc[0]}, "
                  f"{bra['dtype'].iloc[0]})", columns,
                  note="GMACs, latency (ms, median [p20–p80]) and peak memory (MB) per resolution (tokens per side). "
                  "Best per column within each phase and backend in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    keyed = {(r["phase"], r["backend"], r[axis], r["resolution"]): r for _, r in bra.iterrows()}
    label = (lambda v: str(int(v))) if axis == "topk" else str
    ran = sorted(set(zip(bra["phase"], bra["backend"], bra[axis])), key=lambda k: (k[0], k[1], str(type(k[2])), k[2]))
    for phase, backend, value in ran:  # only what the sweep ran: no row of "—" for a combination it never did
        cells: list[object] = [phase, backend, label(value)]
        for r in resolutions:
            row = keyed.get((phase, backend, value, r))
            if row is None:
                cells += [None, None, None]
            else:
                cells += [_value(row["gmacs"]), _latency_or_status(row), _memory(row)]
        table.rows.append(cells)
        table.blocks.append(blocks.setdefault((phase, backend), len(blocks)))
    return table


def backend_table(frame: pd.DataFrame) -> Table | None:
    """(c) Every non-reference backend against its family's reference: speedup, memory saving, error."""
    rows = with_reference(with_variants(frame))
    others = rows[rows["backend"] != rows["reference_backend"]]
    if others.empty:
        return None
    table = Table("backends", "Backends against their family's reference backend on the same case",
                  [*_case_columns(), Column("Status"),
                   Column("Speedup", _ratio, "max", note="Speedup: reference latency / latency, with its 95% "
                          "confidence interval where the two were timed in paired rounds."),
                   Column("Mem saving", _ratio, "max", note="Mem saving: reference peak memory / peak memory."),
                   Column("Rel. err", lambda v: f"{v:.1e}", "min",
                          note="Rel. err: ‖out − exact‖ / ‖exact‖ against float64 math on the same rounded weights "
                          "and input, of the tensor (output or a gradient) nearest its bound."),
                   Column("Ref. err", lambda v: f"{v:.1e}", paper=False,
                          note="Ref. err: the reference backend's own error there, in the same dtype."),
                   Column("Bound", lambda v: f"{v:.1e}", paper=False,
                          note="Bound: max(2 × Ref. err, the dtype's floor)."),
                   Column("Max abs err", lambda v: f"{v:.1e}", paper=False,
                          note="Max abs err: max |out − exact| over output and gradients.")],
                  note="A mismatch exceeded its bound and shows no speedup. Best per column within each "
                  "resolution, width and phase in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    for _, row in _sorted(others).iterrows():
        status = row["status"]
        if status == "ok" and row["reference_status"] != "ok":
            reference = row["reference_status"]
            status = f"reference {reference if isinstance(reference, str) else 'missing'}"
        memory_ratio = _memory_ratio(row, "reference")
        memory_saving = None if memory_ratio is None else 1 / memory_ratio
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            status, _speedup(row), memory_saving, _value(row["rel_err"]), _value(row["ref_rel_err"]),
            _value(row["err_tolerance"]), _value(row["max_abs_err"])])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


def bra_fast_path_table(frame: pd.DataFrame) -> Table | None:
    """(d) BRA's fast paths, in the terms of their targets: speedup and memory against the official
    algorithm (memory target: 1/topk of it), speedup over the flex backend, and speedup over dense
    flash attention as a share of the attention FLOP ratio (regions / topk; identity kv mode)."""
    rows = with_dense(with_backend(with_reference(with_variants(frame)), "flex", "flex"), "sdpa_flash", "flash")
    rows = rows[(rows["family"] == "bra") & (rows["kv_downsample_mode"].fillna("identity") == "identity")
                & (rows["backend"] != rows["reference_backend"])]
    if rows.empty:
        return None
    table = Table("bra_fast_paths", "BRA fast paths against the official algorithm, the flex backend and dense "
                  "flash attention",
                  [*_case_columns(), Column("Latency ms", best="min"),
                   Column("× ref", _ratio, "max", note="× ref: speedup over the official algorithm (the reference "
                          "backend)."),
                   Column("Mem/ref", _ratio, "min", note="Mem/ref: peak memory over the reference's; the target is "
                          "1/topk."),
                   Column("1/topk", _ratio),
                   Column("× flex", _ratio, "max", note="× flex: speedup over BRA's flex backend."),
                   Column("× flash", _ratio, "max", note="× flash: speedup over full attention through SDPA's "
                          "flash kernel."),
                   Column("FLOP ratio", lambda v: f"{v:.3g}", paper=False,
                          note="FLOP ratio: the attention FLOP ratio, regions / topk."),
                   Column("% of FLOP ratio", lambda v: f"{v:.0%}", "max",
                          note="% of FLOP ratio: × flash as a share of the attention FLOP ratio (regions / topk)."),
                   Column("TFLOP/s", lambda v: f"{v:.3g}", "max", paper=False, note="TFLOP/s: from fvcore's MACs."),
                   Column("% peak", lambda v: f"{v:.1f}", "max", paper=False,
                          note="% peak: TFLOP/s as a share of the profile's dense peak."),
                   Column("Tile eff.", lambda v: f"{v:.0%}", "max",
                          note="Tile eff.: the share of the multiply-adds its kernels' matrix tiles issue that is "
                          "useful (the backends that report it).")],
                  note="Best per column within each case in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    for _, row in _sorted(rows).iterrows():
        ok = row["status"] == "ok"
        flop_ratio = row["n_win"] ** 2 / row["topk"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            _latency_or_status(row), _speedup(row),
            _memory_ratio(row, "reference"), 1 / row["topk"],
            None if row["backend"] == "flex" else _value(row["flex_speedup"]), _value(row["flash_speedup"]),
            flop_ratio, _value(row["flash_speedup"] / flop_ratio),
            _value(row["tflops_achieved"]) if ok else None, _value(row["pct_of_peak"]) if ok else None,
            _value(row["tile_efficiency"]) if ok else None])
        table.blocks.append(blocks.setdefault(
            (row["phase"], row["resolution"], row["dim"], row["variant"]), len(blocks)))
    return table


def all_tables(frame: pd.DataFrame) -> list[Table]:
    tables = [main_table(frame), ablation_table(frame, "topk"), ablation_table(frame, "kv_downsample_mode"),
              backend_table(frame), bra_fast_path_table(frame)]
    return [t for t in tables if t is not None]


MODEL_PHASES = ("fwd", "fwd+bwd")


def _model_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by resolution, batch and dtype, then models in ``list_models`` order, attentions in registry order."""
    models = {name: i for i, name in enumerate(list_models())}
    families = {name: i for i, name in enumerate(attentions.list_attentions())}
    return frame.assign(_model=frame["model"].map(lambda m: models.get(m, len(models))),
                        _attention=frame["attention"].map(lambda a: families.get(a, len(families)))).sort_values(
        ["resolution", "batch", "dtype", "_model", "_attention", "attention", "backend"], kind="stable")


def model_table(frame: pd.DataFrame) -> Table:
    """The model-level paper table: per model, attention choice, backend and resolution, parameters, GFLOPs
    (fvcore MACs per image) and, for the forward and for forward+backward, throughput, latency and memory."""
    names = {name: info["display_name"] for name, info in list_models().items()}
    columns = [Column("Model"), Column("Attention"), Column("Backend"), Column("Res.", heading=True),
               Column("Batch", heading=True), Column("Dtype", heading=True),
               Column("Params (M)", lambda v: f"{v:.2f}"),
               Column("FLOPs (G)", lambda v: f"{v:.3f}", note="FLOPs (G): fvcore multiply-adds of one image's "
                      "forward in eval mode, as the papers count them.")]
    for phase in MODEL_PHASES:
        columns += [Column(f"{phase} img/s", lambda v: f"{v:.4g}", "max", span=phase),
                    Column(f"{phase} ms", best="min", paper=False),
                    Column(f"{phase} MB", lambda v: f"{v:.4g}", "min", span=phase)]
    table = Table("models", "Backbones: parameters, FLOPs, throughput and memory", columns,
                  note="fwd: the forward in eval mode; fwd+bwd: forward and backward in training mode; img/s: "
                  "images per second; MB: peak memory. Best per column within each resolution, batch and dtype in "
                  "bold. " + CONVENTIONS)
    keys = ["model", "attention", "backend", "resolution", "batch", "dtype"]
    ordered = _model_order(frame)
    blocks: dict[tuple, int] = {}
    for key, rows in ordered.groupby(keys, sort=False):
        model, attention, backend, resolution, batch, dtype = key
        first = rows.iloc[0]
        cells: list[object] = [names.get(model, model), attention, backend, f"{resolution}²", int(batch), dtype,
                               _value(rows["params_m"].max()), _value(rows["gmacs_per_image"].max())]
        for phase in MODEL_PHASES:
            row = rows[rows["phase"] == phase]
            if row.empty:
                cells += [None, None, None]
            elif row.iloc[-1]["status"] == "noisy":  # marked, never bold; its memory is no timing figure
                row = row.iloc[-1]
                cells += [f"{row['throughput']:.4g} NOISY", _latency_or_status(row), _value(row["peak_mem_mb"])]
            elif row.iloc[-1]["status"] != "ok":  # in the throughput column, which the LaTeX shows too
                cells += [row.iloc[-1]["status"].upper(), None, None]
            else:
                row = row.iloc[-1]
                cells += [_value(row["throughput"]), _latency(row), _value(row["peak_mem_mb"])]
        table.rows.append(cells)
        table.blocks.append(blocks.setdefault((first["resolution"], first["batch"], first["dtype"]), len(blocks)))
    return table
