"""The CI recipes of examples/ci/ as shipped: the commands the GitHub workflow runs, run as a script.

The workflow (``examples/ci/github-actions.yml``) measures base and head with ``bench-pr.sh measure``, then judges
with ``bench-pr.sh judge``; the GitLab job runs the same script. The fast tier judges two commits' worth of rows
(a committed run as base; as head the same rows, their latencies doubled, or gated by a bound they break) and
checks the summary and the exit status; the slow tier runs the workflow's steps whole on a git repository of the
example plugin with two commits.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CI = REPO / "examples" / "ci"
RUN = REPO / "results" / "cpu" / "20261205T091110Z-bra56-topk4"  # bra at 56², both phases; chunked vs torch:
# fwd 0.672 [0.615, 0.734], fwd+bwd 0.866 [0.811, 0.923] (tests/test_gates.py checks the arithmetic)
LATENCIES = ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "latency_ms_ci_low", "latency_ms_ci_high"]
SPEEDUPS = ["speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"]


def workflow_steps() -> list[str]:
    """The GitHub workflow's shell lines that call the script, with the script where this repository has it."""
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    lines = [line.strip() for step in workflow["jobs"]["bench"]["steps"] for line in step.get("run", "").splitlines()
             if "bench-pr.sh" in line]
    return [line.replace(".github/bench-pr.sh", str(CI / "bench-pr.sh")) for line in lines]


def script_env(out: Path, **extra: str) -> dict[str, str]:
    """The job's environment: the suite's command line as this checkout has it, GitHub's summary file."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(RUN_BENCH=f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'run_bench.py'))}",
               BENCH_OUT=str(out), GITHUB_STEP_SUMMARY=str(out / "github-summary.md"), OMP_NUM_THREADS="1",
               BENCH_PLUGIN="maxbra", **extra)
    return env


def judge(out: Path, gates: str = "") -> tuple[int, str]:
    [command] = [line for line in workflow_steps() if line.endswith("judge")]
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=script_env(out, BENCH_GATES=gates),
                          capture_output=True, text=True, timeout=300)
    summary = (out / "github-summary.md").read_text() if (out / "github-summary.md").exists() else ""
    return proc.returncode, summary + proc.stderr


def rows_of_two_commits(out: Path, slower: float = 1.0) -> None:
    """base: the committed run; head: the same rows, bra/chunked's latencies times ``slower`` (its reference,
    timed beside it, as fast as in base: the machine did not change, the code did)."""
    results = out / "results" / "cpu"
    results.mkdir(parents=True)
    for name in ("base", "head"):
        shutil.copy(RUN.with_suffix(".json"), results / f"{name}.json")
    shutil.copy(RUN.with_suffix(".csv"), results / "base.csv")
    frame = pd.read_csv(RUN.with_suffix(".csv"))
    chunked = frame["backend"] == "chunked"
    latencies = [column for column in LATENCIES if column in frame]  # (a run from before the intervals has none)
    frame.loc[chunked, latencies] *= slower
    frame.loc[chunked, SPEEDUPS] /= slower
    frame.to_csv(results / "head.csv", index=False)


def test_the_workflow_measures_base_then_head_then_judges():
    assert workflow_steps() == [f"bash {CI / 'bench-pr.sh'} measure base .bench-base",
                                f"bash {CI / 'bench-pr.sh'} measure head .", f"bash {CI / 'bench-pr.sh'} judge"]
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["benchmark"]["script"]
    assert [line for line in gitlab if "bench-pr.sh" in line] == [
        "bash ci/bench-pr.sh measure base .bench-base", "bash ci/bench-pr.sh measure head .",
        "bash ci/bench-pr.sh judge"]


def test_judge_passes_an_unchanged_head_and_its_gates(tmp_path):
    rows_of_two_commits(tmp_path)
    status, summary = judge(tmp_path, "bra/chunked <= 0.95 * bra/torch\nbra/chunked gmacs <= bra/torch\n")
    assert status == 0, summary
    assert summary.startswith("## Benchmark: head against base\n\nNo regression.\n"), summary
    assert "PASSED: no regression" in summary and "### Ratio gates on head" in summary
    assert "2 of 2 gates passed" in summary
    exported = json.loads((tmp_path / "benchmark.json").read_text())
    assert exported and all(entry["unit"] in ("ms", "MB") for entry in exported)


def test_judge_fails_a_head_twice_as_slow(tmp_path):
    rows_of_two_commits(tmp_path, slower=2.0)
    status, summary = judge(tmp_path)
    assert status == 1, summary
    assert "**Regression** (compare exit status 1)." in summary and "**FAILED: 2 regressed" in summary


def test_judge_fails_a_broken_gate_naming_it(tmp_path):
    rows_of_two_commits(tmp_path)
    status, summary = judge(tmp_path, "bra/chunked <= 0.8 * bra/torch")
    assert status == 1, summary
    assert "No regression." in summary and "0 of 1 gates passed" in summary
    assert "**fail**: the ratio 0.866 [0.811, 0.923] does not clear <= 0.8" in summary  # fwd+bwd; fwd clears it


def test_judge_says_when_a_gate_names_no_row(tmp_path):
    rows_of_two_commits(tmp_path)
    status, summary = judge(tmp_path, "maxbra <= bra")
    assert status == 2 and "'maxbra' names no row: no family 'maxbra' in the run" in summary


@pytest.mark.slow  # two small sweeps and a judge, as a runner does them: about a minute
def test_the_workflow_on_two_commits_of_the_example_plugin(tmp_path):
    """A git repository of the example plugin: base, then a head that changes its docstring. The workflow's
    steps (the worktree of base, measure base, measure head, judge) as the YAML runs them."""
    repository = tmp_path / "plugin"
    shutil.copytree(REPO / "examples" / "plugin", repository)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repository, check=True)
    subprocess.run([*git, "add", "."], cwd=repository, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=repository, check=True)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repository, check=True, capture_output=True,
                          text=True).stdout.strip()
    module = repository / "maxbra.py"
    module.write_text(module.read_text().replace("strongest features.", "strongest features (head)."))
    subprocess.run([*git, "commit", "-qam", "head"], cwd=repository, check=True)
    subprocess.run(["git", "worktree", "add", "-q", ".bench-base", base], cwd=repository, check=True)
    out = repository / "bench-out"
    env = script_env(out, BENCH_GATES="maxbra gmacs <= 1.01 * bra", BENCH_SWEEP=(
        "--gpu cpu --preset quick --families bra maxbra --backends torch sdpa --topk 4 --kv-modes identity "
        "--phase fwd --min-time 0.2"))
    *measures, judge_step = workflow_steps()
    for command in measures:
        proc = subprocess.run(["bash", "-c", command], cwd=repository, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    judged = subprocess.run(["bash", "-c", judge_step], cwd=repository, env=env, capture_output=True, text=True,
                            timeout=300)
    summary = (out / "github-summary.md").read_text()
    # The verdicts are this shared machine's (two runs minutes apart: no regression, undecided, or a drift that
    # compare could not tell from one; a row timed noisily fails its gate): the exit status must be the summary's,
    # and a gate's failure can only be a noisy row, for its measure (the MACs) is the same for both families.
    verdict = summary.splitlines()[2]
    assert verdict.startswith(("No regression.", "Undecided:", "**Regression**")), summary
    gates = [line for line in summary.splitlines() if line.startswith("| `maxbra gmacs <= 1.01 * bra` |")]
    assert len(gates) == 1 and (gates[0].endswith("| exact | pass |") or " is noisy (" in gates[0]), summary
    failed = verdict.startswith("**Regression**") or "0 of 1 gates passed" in summary
    assert judged.returncode == (1 if failed else 0), summary
    for name in ("base", "head"):
        metadata = json.loads((out / "results" / "cpu" / f"{name}.json").read_text())
        [plugin] = metadata["plugins"]
        assert plugin["module"] == "maxbra" and plugin["families"] == ["maxbra"]
        assert (out / "reports" / "cpu" / name / "README.md").is_file()
