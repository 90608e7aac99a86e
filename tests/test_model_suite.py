"""``run_bench.py --suite models``: a small sweep of whole backbones end to end through the CLI, its rows,
metadata and report; planning, flag validation, resume, and a folder holding both suites."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from fvcore.nn import FlopCountAnalysis

import attentions
import bench
import bench.report.plots
import bench.report.build
from attentions.models import build_model, list_models
from bench import cli
from bench.suites.model import model_groups, run_model_group
from bench.report.plots import plot_model_throughput
from bench.core.profiles import PROFILES
from bench.schema.columns import MODEL_COLUMNS
from bench.report.tables import model_table
from bench.schema.registry_facts import from_snapshot, frozen_facts
from bench.suites.snapshot import registry_snapshot
from background import Job, background, finished, user_env
from figure_checks import check_legends_match, check_png
from test_bench_cli import REPO, RUN_BENCH, data_lines, dry_run, dry_run_labels

MIXED = "window,deformable,bra,full"
# 2 models × 2 resolutions × 2 phases. At 32² the last map is 1×1, which training-mode BatchNorm
# cannot normalise over one image: both fwd+bwd rows at 32² are real 'error' rows.
FLAGS = ["--suite", "models", "--gpu", "cpu", "--models", "biformer_tiny", "swin_layout", "--attentions", MIXED,
         "--resolutions", "32", "64", "--batch", "1", "--min-time", "0.01", "--quiet"]
CASES = 8


def row_label(row: pd.Series) -> str:
    """bench.suites.cases.ModelCase.label() rebuilt from a results row."""
    return (f"{row['model']}[{row['attention']}]/{row['backend']} {row['resolution']}px b{row['batch']} "
            f"{row['dtype']} {row['phase']}")


@background("model_run")
def model_run_jobs(param: None, folder: Path) -> dict[str, Job]:
    """The sweep, in a process of its own (run in the background while other tests run: tests/background.py)."""
    flags = [*FLAGS, "--results-dir", str(folder / "results"), "--run-id", "models"]
    return {"sweep": Job([sys.executable, str(RUN_BENCH), *flags], REPO, user_env())}


@pytest.fixture(scope="module")
def model_run(request, tmp_path_factory):
    """The sweep, run as a user runs it; its dry run, here."""
    sweep = finished(request, tmp_path_factory)["sweep"]
    assert sweep.returncode == 0, sweep.output[-6000:]
    flags = sweep.command[2:]
    results_dir = Path(flags[flags.index("--results-dir") + 1])
    csv_path = results_dir / "cpu" / "models.csv"
    return {"dir": results_dir, "flags": flags, "dry": dry_run(flags), "stdout": sweep.output, "csv": csv_path,
            "frame": bench.load_results(csv_path), "reports": results_dir.parent / "reports" / "cpu" / "models"}


def test_rows_follow_the_model_schema_and_the_dry_run(model_run):
    frame = model_run["frame"]
    assert data_lines(model_run["csv"])[0].decode().strip() == ",".join(MODEL_COLUMNS)
    assert list(frame.columns) == MODEL_COLUMNS
    labels = dry_run_labels(model_run["dry"])
    assert len(labels) == CASES and sorted(frame.apply(row_label, axis=1)) == sorted(labels)
    assert not frame["case_key"].duplicated().any() and (frame["run_id"] == "models").all()
    assert set(zip(frame["model"], frame["attention"])) == {("biformer_tiny", "bra"), ("swin_layout", MIXED)}
    options = frame.set_index("model")["options"].map(json.loads)
    assert options["swin_layout"].iloc[0] == {"attention": MIXED.split(","), "auto_pad": True}
    assert options["biformer_tiny"].iloc[0] == {"attention": "bra", "auto_pad": True}
    summary = model_run["stdout"]
    assert f"{CASES} cases run, 0 already complete" in summary and "swin_layout" in summary


def test_failed_cases_are_rows_with_their_reason(model_run):
    frame = model_run["frame"]
    failed = frame[~frame["status"].isin(["ok", "noisy"])]  # noisy: timed on this (shared) machine
    assert set(zip(failed["resolution"], failed["phase"])) == {(32, "fwd+bwd")} and len(failed) == 2
    assert (failed["status"] == "error").all()
    assert failed["status_detail"].str.contains("Expected more than 1 value per channel when training").all()
    assert failed[["latency_ms_median", "throughput", "peak_mem_mb"]].isna().all(axis=None)


def test_measurements_are_consistent(model_run):
    frame = model_run["frame"]
    ok = frame[frame["status"].isin(["ok", "noisy"])]  # noisy: this (shared) machine's timing scattered
    assert len(ok) == CASES - 2
    for (model, attention), rows in ok.groupby(["model", "attention"]):
        options = {"attention": attention.split(",") if "," in attention else attention}
        params = sum(p.numel() for p in build_model(model, **options).parameters()) / 1e6
        assert rows["params_m"].to_numpy() == pytest.approx(params, rel=1e-12)
        assert rows["param_mb"].to_numpy() == pytest.approx(params * 1e6 * 4 / 2 ** 20, rel=1e-12)
    assert (ok["latency_ms_p20"] <= ok["latency_ms_median"]).all()
    assert (ok["latency_ms_median"] <= ok["latency_ms_p80"]).all() and (ok["latency_ms_p20"] > 0).all()
    assert (ok["rounds"] >= 10).all() and (ok["peak_mem_mb"] > 0).all()
    assert ok["throughput"].to_numpy() == pytest.approx((ok["batch"] / (ok["latency_ms_median"] / 1e3)).to_numpy())
    factor = ok["phase"].map({"fwd": 2, "fwd+bwd": 6})
    assert ok["hw_gflops"].to_numpy() == pytest.approx((factor * ok["batch"] * ok["gmacs_per_image"]).to_numpy())
    training = ok[ok["phase"] == "fwd+bwd"]
    assert len(training) == 2 and (training["peak_mem_mb"] >= training["param_mb"]).all()  # every weight's gradient
    assert ok["pct_of_peak"].isna().all() and ok.loc[ok["status"] == "ok", "status_detail"].isna().all()
    assert ok.loc[ok["status"] == "noisy", "status_detail"].str.startswith("timing spread p80/p20").all()
    assert ok["speedup_vs_ref"].isna().all()  # one backend: nothing to pair with
    # BRA's 7×7 regions do not divide biformer_tiny's stage maps at 32² and 64² (8×8 and 16×16 in stage 1): padded
    biformer = ok[ok["model"] == "biformer_tiny"]
    assert (biformer["gmacs_per_image_unpadded"] < biformer["gmacs_per_image"]).all()
    seconds = ok["latency_ms_median"] / 1e3
    assert ok["tflops_achieved"].to_numpy() == pytest.approx(
        (factor * ok["batch"] * ok["gmacs_per_image_unpadded"] * 1e9 / seconds / 1e12).to_numpy())
    assert (ok["timed_s"] >= 0.01).all() and (ok["warmup_calls"] >= 3).all()


def test_the_backends_of_a_model_are_timed_in_paired_rounds():
    """swin_layout with full attention on torch, sdpa and sdpa_math: one group, the same rounds for all three,
    and the other backends' speedups over torch with an interval around them, as in the attention suite."""
    cases = [bench.ModelCase("swin_layout", "full", backend, 1, 64, "float32", "cpu", "fwd")
             for backend in ("torch", "sdpa", "sdpa_math")]
    assert model_groups(cases) == [cases]
    ctx = bench.RunContext(run_id="paired", profile=PROFILES["cpu"], device_name="test-cpu",
                           timing=bench.TimingPolicy(warmup_max_calls=3, min_time_s=0.05, min_rounds=10))
    reference, sdpa, math_kernel = run_model_group(cases, ctx)
    assert {row["status"] for row in (reference, sdpa, math_kernel)} <= {"ok", "noisy"}, sdpa["status_detail"]
    assert reference["rounds"] == sdpa["rounds"] == math_kernel["rounds"] >= 10
    assert reference.get("speedup_vs_ref") is None
    for row in (sdpa, math_kernel):
        assert 0 < row["speedup_ci_low"] <= row["speedup_vs_ref"] <= row["speedup_ci_high"] < math.inf


def test_gmacs_are_fvcore_counts_of_one_image_in_eval_mode(model_run):
    frame = model_run["frame"]
    row = frame[(frame["model"] == "biformer_tiny") & (frame["resolution"] == 64)].iloc[0]
    model = build_model("biformer_tiny", auto_pad=True).eval()
    analysis = FlopCountAnalysis(model, torch.randn(1, 3, 64, 64))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert row["gmacs_per_image"] * 1e9 == pytest.approx(analysis.total(), rel=1e-12)
    counts = frame.groupby(["model", "resolution"])["gmacs_per_image"].agg(["min", "max"]).dropna()
    assert (counts["min"] == counts["max"]).all()  # one count per model and resolution, whatever the phase
    assert (counts.xs(64, level="resolution")["min"] > counts.xs(32, level="resolution")["min"]).all()


def test_metadata_names_the_suite(model_run):
    meta = json.loads(model_run["csv"].with_suffix(".json").read_text())
    assert meta["suite"] == "models" and meta["preset"] is None and meta["run_id"] == "models"
    assert meta["argv"] == model_run["flags"] and "--suite models" in meta["command"]
    counts = meta["status_counts"]
    assert counts.get("ok", 0) + counts.get("noisy", 0) == CASES - 2 and counts["error"] == 2  # noisy: shared machine
    assert sum(counts.values()) == meta["cases_planned"] == CASES
    assert meta["environment"]["torch"] == torch.__version__ and meta["started"] <= meta["finished"]


def test_report_has_the_model_table_in_three_formats(model_run):
    out = model_run["reports"]
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["models.csv", "models.md", "models.tex"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["model_throughput.pdf", "model_throughput.png"]
    check_png(out / "plots" / "model_throughput.png")
    facts = from_snapshot(registry_snapshot())
    figure = plot_model_throughput(model_run["frame"], facts)
    assert check_legends_match(figure, facts) == 6  # the ok rows: 2 models × fwd at 32², 2 × both phases at 64²
    labels = {t.get_text() for ax in figure.axes for t in ax.texts}
    assert labels == {"biformer_tiny", "swin_layout (window,deformable,bra,full)"}
    table = pd.read_csv(out / "tables" / "models.csv")
    assert list(table.columns[:8]) == ["Model", "Attention", "Backend", "Res.", "Batch", "Dtype", "Params (M)",
                                       "FLOPs (G)"]
    assert len(table) == 4 and set(table["Model"]) == {"BiFormer-T", "Swin-T layout"}
    assert list(table["Res."]) == ["32²", "32²", "64²", "64²"]  # by resolution, then models in list_models order
    assert (table.loc[table["Res."] == "32²", "fwd+bwd img/s"] == "ERROR").all()
    frame = model_run["frame"]
    swin64 = frame[(frame["model"] == "swin_layout") & (frame["resolution"] == 64)]
    shown = table[(table["Model"] == "Swin-T layout") & (table["Res."] == "64²")].iloc[0]
    assert shown["FLOPs (G)"] == pytest.approx(swin64["gmacs_per_image"].iloc[0])
    fwd_ms = float(str(shown["fwd ms"]).split()[0])  # "1.23 [1.2–1.3]", "… NOISY" when the machine scattered it
    assert fwd_ms == pytest.approx(swin64.loc[swin64["phase"] == "fwd", "latency_ms_median"].iloc[0], rel=1e-2)
    tex = (out / "tables" / "models.tex").read_text()
    assert re.findall(r"\\(begin|end)\{(\w+)\}", tex) == [("begin", "table"), ("begin", "tabular"),
                                                           ("end", "tabular"), ("end", "table")]
    columns = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
    body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
    assert all(len(re.split(r"(?<!\\)&", line)) == columns for line in body.splitlines()
               if line.endswith("\\\\") and r"\multicolumn" not in line)  # not a heading or a span
    assert r"\textbf{" in tex and "BiFormer-T" in tex and "64$^2$" in tex
    assert tex.count("ERROR") == 2  # the failed rows show their status in the paper's version too
    readme = (out / "README.md").read_text()
    assert "### models" in readme and "suite `models`" in readme and "(plots/model_throughput.png)" in readme


def test_model_table_keeps_failed_rows_out_of_the_ranking(model_run):
    frame = model_run["frame"].copy()
    fast = frame[frame["status"].isin(["ok", "noisy"]) & (frame["phase"] == "fwd") & (frame["resolution"] == 64)]
    oom = fast["latency_ms_median"].idxmax()
    frame.loc[oom, "status"] = "oom"
    frame.loc[oom, "latency_ms_median"] = 1e-6  # a number left behind must never be shown or ranked
    table = model_table(frame, frozen_facts())
    rows = table.frame()
    assert (rows["fwd img/s"] == "OOM").sum() == 1
    assert rows.loc[rows["fwd img/s"] == "OOM", ["fwd ms", "fwd MB"]].isna().all(axis=None)
    assert "1e-06" not in table.to_markdown()
    frame.loc[oom, ["status", "latency_ms_median"]] = ["noisy", model_run["frame"].loc[oom, "latency_ms_median"]]
    noisy = model_table(frame, frozen_facts()).frame()
    marked = noisy[noisy["fwd img/s"].astype(str).str.endswith(" NOISY")]
    assert len(marked) >= 1 and marked["fwd MB"].notna().all()  # memory shown: it is no timing figure


def test_resume_of_a_complete_model_run_has_nothing_left(model_run, capsys):
    assert cli.main(["--resume", "models", "--results-dir", str(model_run["dir"]), "--dry-run"]) == 0
    assert f"0 cases to run, {CASES} already complete" in capsys.readouterr().out


def test_compare_refuses_model_runs(model_run, capsys):
    assert cli.main(["compare", str(model_run["csv"]), str(model_run["csv"])]) == 2
    assert "models-suite run" in capsys.readouterr().err


def test_a_folder_with_both_suites_reports_both(model_run, small_results, tmp_path, monkeypatch):
    def fake_plots(frame, out, facts, names):  # drawn and tested in test_plots.py
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{names[0]}.png").write_bytes(b"")
        return [out / f"{names[0]}.png"]
    monkeypatch.setattr(bench.report.build, "make_plots", fake_plots)
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "attention.csv").write_bytes(small_results.read_bytes())
    (folder / "models.csv").write_bytes(model_run["csv"].read_bytes())
    readme = bench.report.build.build_report(folder, tmp_path / "out").read_text()
    assert "### main" in readme and "### models" in readme and "## Plots" in readme
    assert "(plots/scaling.png)" in readme and "(plots/model_throughput.png)" in readme
    models = pd.read_csv(tmp_path / "out" / "tables" / "models.csv")
    main = pd.read_csv(tmp_path / "out" / "tables" / "main.csv")
    assert len(models) == 4 and len(main) == len(bench.load_results(small_results))


# --------------------------------------------------------------------------------------------
# planning and flags (in-process, nothing runs)
# --------------------------------------------------------------------------------------------

def test_default_model_sweep(tmp_path):
    labels = dry_run_labels(dry_run(["--suite", "models", "--gpu", "cpu", "--results-dir", str(tmp_path / "r")]))
    families = list(attentions.list_attentions())
    expected = {f"{model}[{info['options']['attention']}]" for model, info in list_models().items()
                if model != "swin_layout"}  # BiFormer's bra, NAT's and DiNAT's neighborhood
    expected |= {f"swin_layout[{family}]" for family in families}
    assert {label.split("/")[0] for label in labels} == expected
    assert len(labels) == len(expected) * 3 * 2  # 224, 512, 1024 px; fwd and fwd+bwd
    assert all(" 224px b8 float32 " in label for label in labels if "224px" in label)  # the CPU profile's batch
    assert all(" b1 " in label for label in labels if "224px" not in label)
    assert all("/torch " in label for label in labels)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, named", [
    (["--models", "resnet50"], "resnet50"),
    (["--attentions", "linear"], "linear"),
    (["--attentions", "window,bra"], "window,bra"),
    (["--backends", "cuda_magic"], "cuda_magic"),
    (["--families", "bra"], "--families"),
    (["--topk", "4"], "--topk"),
    (["--preset", "quick"], "--preset"),
])
def test_bad_model_suite_flags_exit_2_naming_the_value(flags, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--suite", "models", "--gpu", "cpu", "--dry-run", "--results-dir", str(tmp_path / "r"), *flags])
    assert exc.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in message, message


def test_model_flags_need_the_model_suite(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--gpu", "cpu", "--models", "biformer_tiny", "--dry-run", "--results-dir", str(tmp_path / "r")])
    assert exc.value.code == 2 and "--models: not used by --suite attentions (only by --suite models)" in capsys.readouterr().err


def test_list_with_the_model_suite_names_every_model(capsys):
    assert cli.main(["--list", "--suite", "models"]) == 0
    out = capsys.readouterr().out
    for name, info in list_models().items():
        assert re.search(rf"^  {name}\s+{re.escape(info['display_name'])}: depths", out, flags=re.MULTILINE), name
    assert "attention='bra'" in out and "auto_pad=False" in out
