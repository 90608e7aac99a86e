"""The table engine: a table model (columns, cells, blocks, best values in bold) and its renderers, markdown,
LaTeX (booktabs) and CSV. Which tables a report has is the content's (``bench.report.tables``,
``bench.report.tables_bra``).

The markdown and CSV keep every column; the LaTeX is the paper's version: the columns marked for it,
pure ASCII, in ``table`` floats of at most a page that fit the line width (see ``Table.to_latex``).
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

from bench.schema.storage import atomic_write


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
    blocks: list[int] = field(default_factory=list)          # block id per row, for bold and rules; none: one block
    note: str = ""  # after the shown columns' notes: blocks, bold, conventions

    @property
    def row_blocks(self) -> list[int]:
        """The block of every row: ``blocks``, or one block when none are given. ValueError for a table whose
        blocks do not go with its rows (a table of one's own that appends to one and not the other)."""
        if not self.blocks:
            return [0] * len(self.rows)
        if len(self.blocks) != len(self.rows):
            raise ValueError(f"table {self.name!r}: {len(self.blocks)} blocks for {len(self.rows)} rows; give a block "
                             f"for every row, or none (one block)")
        return self.blocks

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
            blocks = self.row_blocks
            for block in set(blocks):
                values = [(r, _number(row[col])) for r, row in enumerate(self.rows) if blocks[r] == block]
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
        blocks = self.row_blocks
        for _, run in itertools.groupby(range(len(self.rows)), key=lambda r: blocks[r]):
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
        blocks = self.row_blocks
        for page, rows in enumerate(self.pages(note)):
            caption = self.caption if page == 0 else f"{self.caption} (continued)"
            label = f"tab:{self.name}" if page == 0 else f"tab:{self.name}:{page + 1}"
            out += ["\\begin{table}[tbp]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{4pt}",
                    f"\\caption{{{latex_escape(caption)}}}",
                    f"\\label{{{label}}}", f"\\sbox0{{\\begin{{tabular}}{{{align}}}", "\\toprule",
                    *self._latex_header(shown), "\\midrule"]
            for previous, r in zip([None, *rows], rows):
                new_heading = bool(headed) and (previous is None or headings[r] != headings[previous])
                if previous is not None and (new_heading or blocks[r] != blocks[previous]):
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
