"""A family of one's own shows up everywhere, without a project file naming it.

tests/throwaway_family.py registers the family 'throwaway' when it is imported (docs/extending.md's minimal
family, under a name of its own). Registered the way docs/extending.md tells a user to (a wrapper script that
imports the module, then runs ``bench.cli.main``; for the tests, conftest.py's ``ATTENTION_EXTENSIONS``), it is:

(a) in a sweep: its dry run lists its cases, and a small real sweep of it writes timed rows;
(b) in that run's report: its rows in the main table;
(c) in the tests that take their families and backends from the registry: collected with the family registered,
    they hold test ids for it (and, in the slow tier, those tests pass for it).

The three processes (the dry run and the sweep through the wrapper, pytest's collection of the registry-driven
test files) run in the background while other tests run (tests/background.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import attentions
import bench
import bench.schema.metadata
from background import Job, background, finished
from test_bench_cli import REPO, TIMED, dry_run_labels, subprocess_env

TESTS = Path(__file__).resolve().parent
# Not imported here: importing the module registers the family, and this process's registry (which the other test
# files parametrise from) stays the package's. Its name and backends, as the module defines them:
FAMILY = "throwaway"
BACKENDS = {"torch", "sdpa"}  # attentions.core.REFERENCE_BACKENDS
WRAPPER = '''import sys

import throwaway_family  # noqa: F401  registers the family 'throwaway'
from bench.cli import main

sys.exit(main())
'''
# The registry-driven tests and the ids they must hold for the family (a prefix of the id's parameters).
REGISTRY_DRIVEN = {
    "tests/test_registry.py::test_nhwc_in_nhwc_out_and_backend_switch_keeps_weights": f"{FAMILY}",
    "tests/test_registry.py::test_analytic_macs_equal_fvcore": f"{FAMILY}",
    "tests/test_registry.py::test_non_floating_input_is_backend_unavailable": f"{FAMILY}-sdpa",
    "tests/test_registry.py::test_input_on_an_unsupported_device_is_backend_unavailable": f"{FAMILY}-torch",
    "tests/test_accuracy.py::test_a_backend_off_by_1_2_or_5_percent_is_a_mismatch": f"{FAMILY}-bfloat16",
    "tests/test_accuracy.py::test_every_honest_cpu_backend_is_within_its_bound": f"{FAMILY}-sdpa-float32-fwd+bwd",
    "tests/test_speed_benchmarks.py::test_attention_speed": f"{FAMILY}-sdpa-fwd",
    "tests/test_bad_module_input.py::test_macs_take_numpy_integers_as_ints": f"{FAMILY}",
    "tests/test_bad_module_input.py::test_raises_a_suite_error_that_names_the_value": f"{FAMILY}-float64-input",
    "tests/test_models.py::test_every_attention_choice_runs_forward_and_backward": f"{FAMILY}",
    "tests/test_cuda.py::test_backend_matches_naive_reference": f"{FAMILY}-torch-bfloat16",
}


def extension_env() -> dict[str, str]:
    """A user's environment with the tests folder importable (the module that registers the family) and
    conftest.py told to import it."""
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(REPO), env.get("PYTHONPATH")]))
    env["ATTENTION_EXTENSIONS"] = "throwaway_family"
    return env


@background("covered")
def covered_jobs(param: None, folder: Path) -> dict[str, Job]:
    """The dry run, the sweep and the collection of the registry-driven tests, each in a process of its own with
    the family registered as a user registers it (run in the background while other tests run:
    tests/background.py)."""
    wrapper = folder / "my_bench.py"
    wrapper.write_text(WRAPPER)
    results, reports = folder / "results", folder / "reports"
    files = sorted({test.split("::")[0] for test in REGISTRY_DRIVEN})
    return {
        "dry": Job([sys.executable, str(wrapper), "--gpu", "cpu", "--families", FAMILY, "--dry-run"], REPO,
                   extension_env()),
        "sweep": Job([sys.executable, str(wrapper), "--gpu", "cpu", "--preset", "quick", "--families", FAMILY,
                      "--min-time", "0", "--quiet", "--run-id", "throwaway", "--results-dir", str(results),
                      "--reports-dir", str(reports)], REPO, extension_env()),
        "collected": Job([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                         REPO, extension_env()),
    }


@pytest.fixture(scope="module")
def covered(request, tmp_path_factory):
    """The three processes' outputs, and the sweep's folders."""
    jobs = finished(request, tmp_path_factory)
    for name, job in jobs.items():
        assert job.returncode == 0, f"{name}: {job.output[-4000:]}"
    sweep = jobs["sweep"].command
    return {"dry": jobs["dry"].output, "sweep": jobs["sweep"].output, "collected": jobs["collected"].output,
            "results": Path(sweep[sweep.index("--results-dir") + 1]),
            "reports": Path(sweep[sweep.index("--reports-dir") + 1])}


def test_the_family_comes_from_its_module_alone():
    """Nothing of the project's code names the family; this process, which did not import its module, does not
    have it; the module defines it under that name, on the shared reference backends."""
    assert FAMILY not in attentions.list_attentions()
    project = [REPO / "run_bench.py", *(REPO / "attentions").glob("*.py"), *(REPO / "bench").rglob("*.py")]
    assert not [path for path in project if FAMILY in path.read_text()], "a project file names the family"
    source = (TESTS / "throwaway_family.py").read_text()
    assert f'FAMILY = "{FAMILY}"' in source and "backends = {**REFERENCE_BACKENDS}" in source


def test_a_dry_run_lists_its_cases(covered):
    labels = dry_run_labels(covered["dry"])
    assert labels and all(label.split("/", 1)[0] == FAMILY for label in labels), labels[:5]
    backends = {label.split("/", 1)[1].split(" ", 1)[0] for label in labels}
    assert backends == BACKENDS
    assert {label.rsplit(" ", 1)[1] for label in labels} == {"fwd", "fwd+bwd"}


def test_a_small_real_sweep_writes_timed_rows(covered):
    assert "4 cases run, 0 already complete" in covered["sweep"]
    frame = bench.load_results(covered["results"] / "cpu" / "throwaway.csv")
    assert set(frame["family"]) == {FAMILY} and len(frame) == 4
    assert frame["status"].isin(TIMED).all(), frame[["case_key", "status", "status_detail"]]
    assert set(zip(frame["backend"], frame["phase"])) == {(b, p) for b in BACKENDS for p in ("fwd", "fwd+bwd")}
    # 28², C64, batch 2, by hand: 1568 tokens × 64 × 4 × 64 (qkv and the output projection) plus 1568 × 784 keys
    # × 2 × 64 (q·kᵀ and attn·v): 183,042,048 MACs, which fvcore counts through the harness
    assert (frame["gmacs"] * 1e9).round().eq(183_042_048).all(), frame["gmacs"].tolist()
    assert (frame["rel_err"] <= frame["err_tolerance"]).all()
    sdpa = frame[frame["backend"] == "sdpa"]
    assert (sdpa["speedup_vs_ref"] > 0).all() and (sdpa["reference_backend"] == "torch").all()
    metadata = bench.schema.metadata.read_metadata(covered["results"] / "cpu" / "throwaway.csv")
    assert FAMILY in [family["name"] for family in metadata["registry"]["families"]]


def test_the_runs_report_has_its_rows(covered):
    main = pd.read_csv(covered["reports"] / "cpu" / "throwaway" / "tables" / "main.csv")
    mine = main[main.apply(lambda row: FAMILY in row.astype(str).tolist(), axis=1)]
    assert len(mine) == 4, main.head(8).to_string()
    markdown = (covered["reports"] / "cpu" / "throwaway" / "tables" / "main.md").read_text()
    assert sum(line.startswith(f"| {FAMILY} |") for line in markdown.splitlines()) == 4


def test_the_registry_driven_tests_hold_ids_for_it(covered):
    ids = [line.strip() for line in covered["collected"].splitlines() if "::" in line]
    assert ids, covered["collected"][-2000:]
    missing = [f"{test}[{prefix}...]" for test, prefix in REGISTRY_DRIVEN.items()
               if not any(node.startswith(f"{test}[{prefix}") for node in ids)]
    assert not missing, f"no test id for the family in: {missing}"
    # and this process, which did not register it, collected none of them
    assert FAMILY not in attentions.list_attentions()


@pytest.mark.slow  # the registry-driven tests of the family, run: about 20 s
def test_the_registry_driven_tests_pass_for_it(tmp_path):
    files = sorted({test.split("::")[0] for test in REGISTRY_DRIVEN})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", FAMILY, *files],
                          cwd=REPO, env=extension_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and " failed" not in summary, summary
