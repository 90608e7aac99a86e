"""Reports from result files alone: no torch, no ``attentions``, no measuring code; the registry facts they
need come from the runs' metadata (``metadata["registry"]``), else the frozen snapshot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_rgb

import attentions
from attentions.models import list_models
from bench.report.build import build_report
from bench.report.catalog import PLOTS
from bench.schema.registry_facts import FROZEN_SNAPSHOT, facts_of_runs, from_snapshot
from bench.report.figure_style import FAMILY_PALETTE, STYLES, backend_style, family_color
from bench.schema.errors import ResultsFormatError
from bench.schema.metadata import read_metadata, write_metadata
from bench.suites.snapshot import registry_snapshot

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "cpu"
COMMITTED_TABLES = REPO / "reports" / "cpu" / "tables"

# Builds a report with torch and attentions unimportable, then names the measuring modules it loaded.
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
sys.modules["attentions"] = None
from pathlib import Path
from bench.report.build import build_report
build_report(Path(sys.argv[1]), Path(sys.argv[2]))
measuring = sorted(m for m in sys.modules if m.startswith(("bench.core", "bench.suites", "bench.execution")))
print("measuring modules:", measuring)
"""


@pytest.mark.slow  # the whole committed report, plots and all, in a process of its own: about 20 s (the fast tier's
# test_layers imports the report side without torch, and the next test builds a report from a snapshot)
def test_the_committed_report_builds_without_torch_or_the_registry(tmp_path):
    """The committed runs (none records its registry: the frozen snapshot stands in) give the committed tables,
    byte for byte, in a process where torch and attentions cannot be imported."""
    results, out = tmp_path / "results", tmp_path / "report"
    shutil.copytree(RESULTS, results)
    run = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(results), str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "measuring modules: []" in run.stdout
    written = sorted(p.name for p in (out / "tables").iterdir())
    assert written == sorted(p.name for p in COMMITTED_TABLES.iterdir())
    for name in written:
        assert (out / "tables" / name).read_bytes() == (COMMITTED_TABLES / name).read_bytes(), name
    assert sorted(p.stem for p in (out / "plots").glob("*.png")) == sorted(
        p.stem for p in (REPO / "reports" / "cpu" / "plots").glob("*.png"))


def test_a_snapshot_describes_the_live_registry_in_its_order():
    snapshot = json.loads(json.dumps(registry_snapshot()))  # JSON-able, as metadata holds it
    facts = from_snapshot(snapshot)
    live = attentions.list_attentions()
    assert list(facts.families) == list(live)
    for name, family in facts.families.items():
        assert list(family.backends) == list(live[name]["backends"])
        assert family.reference_backend == live[name]["reference_backend"]
        assert dict(family.options) == json.loads(json.dumps(live[name]["options"]))
    assert dict(facts.models) == {name: info["display_name"] for name, info in list_models().items()}
    assert facts.element_size("bfloat16") == 2 and facts.element_size("float64") == 8


def zebra_snapshot() -> dict:
    """The frozen snapshot with a throwaway family, 'zebra', first: backends 'stripes' (its reference) and
    'spots', one option, 'width', of default 3."""
    snapshot = json.loads(FROZEN_SNAPSHOT.read_text())
    zebra = {"name": "zebra", "backends": ["stripes", "spots"], "reference_backend": "stripes",
             "options": {"width": 3}}
    return snapshot | {"families": [zebra, *snapshot["families"]]}


def zebra_run(folder: Path) -> Path:
    """A run of full attention (torch, sdpa) from the committed default run, and the same rows as 'zebra'
    (torch as 'stripes', sdpa as 'spots'), once with width 3 (the snapshot's default) and once with width 5
    (twice as slow); its metadata carries the zebra snapshot."""
    frame = pd.read_csv(RESULTS / "20261205T083834Z-default.csv")
    full = frame[(frame["family"] == "full") & frame["backend"].isin(["torch", "sdpa"])]
    zebras = []
    for width, slower in ((3, 1), (5, 2)):
        zebra = full.assign(family="zebra", backend=full["backend"].map({"torch": "stripes", "sdpa": "spots"}),
                            reference_backend="stripes", options=json.dumps({"width": width}))
        for column in ("latency_ms_median", "latency_ms_p20", "latency_ms_p80"):
            zebra[column] = zebra[column] * slower
        zebras.append(zebra)
    rows = pd.concat([full, *zebras], ignore_index=True)
    rows["case_key"] = ["|".join(map(str, key)) for key in zip(
        rows["family"], rows["backend"], rows["options"], rows["batch"], rows["resolution"], rows["dim"],
        rows["heads"], rows["dtype"], rows["device"], rows["phase"])]
    path = folder / "zebra.csv"
    folder.mkdir()
    rows.to_csv(path, index=False)
    write_metadata(path.with_suffix(".json"), {"run_id": "zebra", "started": "2027-01-01T00:00:00+00:00",
                                               "registry": zebra_snapshot()})
    return path


def test_a_family_unknown_to_the_live_registry_is_placed_and_labelled_from_the_snapshot(tmp_path):
    assert "zebra" not in attentions.list_attentions()
    run = zebra_run(tmp_path / "runs")
    build_report(run.parent, tmp_path / "out")
    main = pd.read_csv(tmp_path / "out" / "tables" / "main.csv")
    families = main["Variant"].str.split(" ").str[0]
    assert set(families) == {"zebra", "full"}
    for _, block in main.assign(family=families).groupby(["Res.", "C/heads", "Phase"], sort=False):
        assert block["family"].tolist() == sorted(block["family"], key=["zebra", "full"].index)  # zebra first
    # labelled against the snapshot's default: width 3 is zebra itself, width 5 a variant of it
    assert set(main["Variant"]) == {"full", "zebra", "zebra (width=5)"}
    backends = pd.read_csv(tmp_path / "out" / "tables" / "backends.csv")
    assert set(backends.loc[backends["Variant"].str.startswith("zebra"), "Backend"]) == {"spots"}

    facts = facts_of_runs([read_metadata(run)])
    assert family_color("zebra", facts) == to_rgb(FAMILY_PALETTE[0])
    assert family_color("full", facts) == to_rgb(FAMILY_PALETTE[1])
    assert backend_style("stripes", facts) == STYLES[0] and backend_style("spots", facts) == STYLES[1]
    figure = PLOTS["latency_vs_resolution"].make(pd.read_csv(run), facts)
    titled = [ax for ax in figure.axes if ax.get_title()]
    assert titled[0].get_title() == "zebra, fwd"  # the first column: the snapshot's first family
    assert {to_rgb(line.get_color()) for line in titled[0].get_lines()} == {to_rgb(FAMILY_PALETTE[0])}


def snapshot(*families: tuple[str, list[str]], models: tuple[str, ...] = ()) -> dict:
    return {"format": 1, "element_sizes": {"float32": 4},
            "families": [{"name": f, "backends": b, "reference_backend": b[0], "options": {}} for f, b in families],
            "models": [{"name": m, "display_name": m.upper()} for m in models]}


def test_several_runs_share_one_view_of_the_facts():
    """The newest run's snapshot, then what the older ones add in the order first seen; a run without a
    snapshot reads as the frozen one."""
    old = {"run_id": "old", "started": "2026-01-01", "registry": snapshot(("a", ["x", "y"]), ("b", ["x"]),
                                                                          models=("m1",))}
    new = {"run_id": "new", "started": "2026-02-01", "registry": snapshot(("c", ["z"]), ("a", ["y", "w"]),
                                                                          models=("m2",))}
    facts = facts_of_runs([old, new])
    assert list(facts.families) == ["c", "a", "b"]
    assert facts.families["a"].backends == ("y", "w", "x") and facts.families["a"].reference_backend == "y"
    assert facts.backends == ["z", "y", "w", "x"] and list(facts.models) == ["m2", "m1"]
    assert list(facts_of_runs([new, old]).families) == ["c", "a", "b"]  # by start time, not by place
    frozen = json.loads(FROZEN_SNAPSHOT.read_text())
    mixed = facts_of_runs([{"run_id": "before", "started": "2027-01-01"}, new])
    assert list(mixed.families) == [f["name"] for f in frozen["families"]] + ["c", "a"]


def test_a_malformed_snapshot_is_named():
    with pytest.raises(ResultsFormatError, match="run broken: .*not a registry snapshot of format 1"):
        facts_of_runs([{"run_id": "broken", "registry": {"format": 2}}])
    with pytest.raises(ResultsFormatError, match="run broken: .* a malformed registry snapshot .*'backends'"):
        facts_of_runs([{"run_id": "broken", "registry": {"format": 1, "families": [{"name": "a"}]}}])
