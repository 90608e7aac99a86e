"""Every ``python run_bench.py ...`` command in the code blocks of README.md and docs/*.md works as documented.

The commands are read from the files at collection, so a command added to the documentation is tested without
editing this file. Each runs as far as this machine allows, and never writes into the repository's results/,
reports/ or runs/:

- ``report`` and ``compare`` run for real on the committed results, the report into a temporary folder (``--out``);
  placeholders (``<run-id>``, ``BASE.csv``, ``NEW.csv``) become committed runs;
- ``--list`` runs as it is;
- a sweep runs with ``--dry-run`` in the fast tier (a GPU profile plans without a GPU, a Ray cluster's sweep
  without the cluster), and a CPU sweep (``--gpu cpu``) runs for real in the slow tier, into temporary folders
  and with ``--min-time 0``;
- ``--resume RUN`` completes, for real, a small run of that id made here and cut short.

The fast tier runs the commands in this process (``run_bench.py`` is ``bench.cli.main``); the slow tier's real
sweeps run as a user runs them, in a process of their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import attentions.plugins as plugins
import bench
from bench import cli
from registry_cases import registry_kept

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMITTED = REPO / "results" / "cpu"
# Placeholders of the documentation, and the committed runs that stand in for them: a single attention run, and two
# runs of the same cases for compare.
RUN_ID = "20261205T091110Z-bra56-topk4"
BASE, NEW = "20261130T103150Z-bra56-topk4-paired", "20261130T103322Z-bra56-topk4-paired"
PLACEHOLDERS = {"<run-id>": RUN_ID, "BASE.csv": f"results/cpu/{BASE}.csv", "NEW.csv": f"results/cpu/{NEW}.csv",
                "RUN.csv": f"results/cpu/{RUN_ID}.csv"}
COMPARE_EXITS = {0: "no regression", 1: "regressed", 3: "undecided"}  # docs/reports.md
GATE_EXITS = {0: "every gate passed", 1: "a gate failed"}  # docs/plugins.md
# The example plugin (examples/plugin): the documentation installs it with pip; here, a command that names its family
# finds its module on the path and in SPARSE_ATTENTION_PLUGINS, as the installed entry point would make it load.
EXAMPLE_PLUGIN, EXAMPLE_FAMILY = REPO / "examples" / "plugin", "maxbra"
SUBCOMMANDS = ("report", "compare", "list", "check", "check-attention", "export")


@dataclass(frozen=True)
class Command:
    """One documented invocation: where it is written, and its arguments after ``python run_bench.py``."""

    document: str
    line: int
    argv: tuple[str, ...]

    @property
    def text(self) -> str:
        return shlex.join(["python", "run_bench.py", *self.argv])

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"

    def option(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    @property
    def kind(self) -> str:
        """A subcommand (SUBCOMMANDS), 'resume' or 'sweep'."""
        if self.argv[:1] and self.argv[0] in SUBCOMMANDS:
            return self.argv[0]
        if "--list" in self.argv:
            return "list"
        return "resume" if "--resume" in self.argv else "sweep"

    @property
    def uses_the_example_plugin(self) -> bool:
        return any(EXAMPLE_FAMILY in word for word in self.argv)

    def why_not_for_real(self) -> str | None:
        """Why this machine cannot run the sweep for real (None: it can; a dry run plans it either way)."""
        gpu = self.option("--gpu")
        if "--ray-address" in self.argv or ("--workers" in self.argv and gpu != "cpu"):
            return f"needs a Ray cluster of GPUs (profile {gpu})"
        if gpu != "cpu":
            return f"needs a GPU (profile {gpu or 'of the visible GPU'})"
        return None


def documented_commands() -> list[Command]:
    """Every ``python run_bench.py`` line of a fenced code block, its comment left out, placeholders filled in."""
    commands = []
    for path in DOCUMENTS:
        text = path.read_text()
        for block in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
            first = text.count("\n", 0, block.start(1)) + 1
            for offset, line in enumerate(block.group(1).splitlines()):
                if not line.startswith("python run_bench.py"):
                    continue
                words = shlex.split(line, comments=True)
                if words[:2] == ["python", "run_bench.py"]:
                    argv = tuple(PLACEHOLDERS.get(word, word).replace("<run-id>", RUN_ID) for word in words[2:])
                    commands.append(Command(str(path.relative_to(REPO)), first + offset, argv))
    return commands


COMMANDS = documented_commands()


def params(commands, marks=()):
    return [pytest.param(command, id=command.id, marks=marks) for command in commands]


def unique(commands: list[Command]) -> list[Command]:
    """One of each documented command line (the readme and docs/running.md share some)."""
    seen, kept = set(), []
    for command in commands:
        if command.argv not in seen:
            seen.add(command.argv)
            kept.append(command)
    return kept


def user_environment(command: Command) -> dict[str, str]:
    """A user's environment for a command run in a process of its own: no Triton interpreter (conftest.py turns
    it on here), one intra-op thread, and the example plugin as if installed where the command names it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    if command.uses_the_example_plugin:
        env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLE_PLUGIN), env.get("PYTHONPATH")])),
                   **{plugins.ENVIRONMENT_VARIABLE: EXAMPLE_FAMILY})
    return env


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """``python run_bench.py ARGV`` in this process: its exit status and its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(autouse=True)
def the_example_plugin_where_a_command_names_it(request, monkeypatch):
    """The example plugin, as if installed, for a command that names its family; afterwards the registry, the
    loaded plugins and the imported modules are as before."""
    command = getattr(getattr(request.node, "callspec", None), "params", {}).get("command")
    if command is not None and command.uses_the_example_plugin:
        monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
        monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, EXAMPLE_FAMILY)
    with registry_kept():
        yield
    sys.modules.pop(EXAMPLE_FAMILY, None)  # its module: the next command imports it afresh


@pytest.fixture(autouse=True)
def the_repository_folders_stay_as_they_are(monkeypatch, tmp_path):
    """Each command runs in a temporary working folder (a default results folder lands there); the repository's
    results/ and reports/ stay untouched, and no runs/ appears in it."""
    before = {name: tree(REPO / name) for name in ("results", "reports")}
    had_runs = (REPO / "runs").exists()
    yield
    assert {name: tree(REPO / name) for name in ("results", "reports")} == before
    assert (REPO / "runs").exists() == had_runs


def test_the_documentation_has_the_commands_this_file_expects():
    """The readme's three commands are found (so the parsing works), every placeholder was filled in, and the
    committed runs standing in for them exist."""
    readme = [command.text for command in COMMANDS if command.document == "README.md"]
    assert readme == ["python run_bench.py --gpu cpu --preset quick", "python run_bench.py --gpu a100",
                      "python run_bench.py report results/cpu", "python run_bench.py check-attention maxbra",
                      "python run_bench.py --gpu cpu --preset quick --families bra maxbra --topk 4 --kv-modes identity"]
    assert not [command.text for command in COMMANDS if re.search(r"<[^>]+>|BASE\.csv|NEW\.csv|RUN\.csv",
                                                                  command.text)]
    for run in (RUN_ID, BASE, NEW):
        assert (COMMITTED / f"{run}.csv").is_file() and (COMMITTED / f"{run}.json").is_file(), run
    assert {command.kind for command in COMMANDS} <= {*SUBCOMMANDS, "resume", "sweep"}


# --------------------------------------------------------------------------------------------
# the fast tier: listings, reports of one run, comparisons and every sweep's plan
# --------------------------------------------------------------------------------------------

def repository_paths(argv: tuple[str, ...]) -> list[str]:
    """The documentation's relative paths of committed results, made absolute (the commands run elsewhere)."""
    return [str(REPO / word) if word.startswith("results/") else word for word in argv]


def out_folder(command: Command, tmp_path: Path) -> list[str]:
    return [] if "--out" in command.argv else ["--out", str(tmp_path / "report")]


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "list"]))
def test_a_documented_listing_runs(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process(list(command.argv))
    assert code == 0 and out.strip(), out
    assert "reference backend" in out  # a family's block


def report_runs(command: Command) -> bool:
    """A report of one run (a .csv) is quick; one of a whole folder makes the committed report anew: slow."""
    return command.argv[1].endswith(".csv")


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "report" and report_runs(c)]) +
                         params(unique([c for c in COMMANDS if c.kind == "report" and not report_runs(c)]),
                                marks=pytest.mark.slow))
def test_a_documented_report_runs_on_the_committed_results(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the documentation: from the repository
    code, out = run_in_process([*repository_paths(command.argv), *out_folder(command, tmp_path)])
    assert code == 0, out
    index = tmp_path / "report" / "README.md"
    assert index.is_file() and f"report written to {index}" in out
    assert (tmp_path / "report" / "tables" / "main.md").is_file()


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "compare"]))
def test_a_documented_comparison_runs_on_the_committed_results(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process(repository_paths(command.argv))
    assert code in COMPARE_EXITS, out
    assert "Cases:" in out  # the verdict's summary line


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "check"]))
def test_a_documented_gate_runs_on_the_committed_results(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process(repository_paths(command.argv))
    assert code in GATE_EXITS, out
    assert re.search(r"^\d+ of \d+ gates passed$", out, re.M), out


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "export"]))
def test_a_documented_export_runs_on_the_committed_results(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process(repository_paths(command.argv))
    assert code == 0, out
    exported = json.loads((tmp_path / command.option("--out")).read_text() if command.option("--out") else out)
    assert exported and all(entry["unit"] in ("ms", "MB") and entry["value"] > 0 for entry in exported)


@pytest.mark.slow  # the kit on every backend of the family, in a process of its own: about 10 s
@pytest.mark.parametrize("command", params(unique([c for c in COMMANDS if c.kind == "check-attention"])))
def test_a_documented_conformance_check_passes(command, tmp_path):
    """In a user's process: here, Triton's interpreter would run the CUDA-only kernels too, slowly."""
    proc = subprocess.run([sys.executable, str(REPO / "run_bench.py"), *command.argv], cwd=tmp_path,
                          env=user_environment(command), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(": conforms"), proc.stdout + proc.stderr


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "sweep"]))
def test_a_documented_sweep_plans_with_dry_run(command, tmp_path, monkeypatch):
    """Every documented sweep, GPU profiles and Ray clusters included, plans its cases with ``--dry-run``."""
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process([*command.argv, "--dry-run"])
    assert code == 0, out
    *labels, last = out.strip().splitlines()
    assert labels and last == f"{len(labels)} cases", out[-500:]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------
# the slow tier: the CPU sweeps for real; what cannot run here, listed
# --------------------------------------------------------------------------------------------

@pytest.mark.slow  # real sweeps: the quick preset takes about a minute here
@pytest.mark.parametrize("command", params(unique([
    c for c in COMMANDS if c.kind == "sweep" and "--dry-run" not in c.argv and c.why_not_for_real() is None])))
def test_a_documented_cpu_sweep_runs_for_real(command, tmp_path):
    results, reports = tmp_path / "results", tmp_path / "reports"
    argv = [*command.argv, "--results-dir", str(results), "--reports-dir", str(reports), "--quiet"]
    if "--min-time" not in argv:
        argv += ["--min-time", "0"]
    env = user_environment(command)
    proc = subprocess.run([sys.executable, str(REPO / "run_bench.py"), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run] = (results / "cpu").glob("*.csv")
    frame = bench.load_results(run)
    assert len(frame) and f"{len(frame)} cases run, 0 already complete" in proc.stdout
    assert frame["status"].isin(["ok", "noisy", "unsupported"]).all(), frame[["case_key", "status", "status_detail"]]
    assert (reports / "cpu" / run.stem / "README.md").is_file()


@pytest.mark.parametrize("command", params([c for c in COMMANDS if c.kind == "resume"]))
def test_a_documented_resume_completes_a_cut_run(command, tmp_path, monkeypatch):
    """The run the command names, made here (full attention, two backends, one row each) in the default results
    folder and cut to its first row as a kill leaves it: the documented command runs the missing case, once."""
    monkeypatch.chdir(tmp_path)
    run_id = command.option("--resume")
    code, out = run_in_process(["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch",
                                "sdpa", "--phase", "fwd", "--quiet", "--min-time", "0", "--no-report", "--run-id",
                                run_id])
    assert code == 0, out
    [path] = (tmp_path / "runs" / "results").glob(f"*/{run_id}.csv")
    whole = bench.load_results(path)
    header, first, _second = path.read_text().splitlines(keepends=True)
    path.write_text(header + first)
    code, out = run_in_process([*command.argv, "--no-report"])
    assert code == 0, out
    assert "1 cases run, 1 already complete" in out, out[-500:]
    resumed = bench.load_results(path)
    assert sorted(resumed["case_key"]) == sorted(whole["case_key"]) and not resumed["case_key"].duplicated().any()
