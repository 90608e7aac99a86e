"""What a sweep records about how its rows were made, and the resume that refuses to mix methods in one run."""

from __future__ import annotations

import json

import pytest

import attentions
from bench import cli
from bench.core.methods import measurement_methods
from bench.schema.columns import SCHEMA_VERSION
from bench.schema.files import load_results

TINY = ["--gpu", "cpu", "--families", "full", "--backends", "torch", "sdpa", "--resolutions", "7", "--batch", "1",
        "--dtype", "float32", "--phase", "fwd", "--min-time", "0", "--no-report", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    assert cli.main([*TINY, "--results-dir", str(folder), "--run-id", "tiny"]) == 0
    return folder / "cpu" / "tiny.csv"


def test_a_run_records_its_schema_version_methods_and_registry(tiny_run):
    metadata = json.loads(tiny_run.with_suffix(".json").read_text())
    assert metadata["schema_version"] == SCHEMA_VERSION
    assert metadata["methods"] == measurement_methods()
    families = metadata["registry"]["families"]  # a list: the registry's order
    assert [family["name"] for family in families] == list(attentions.list_attentions())
    for family, info in zip(families, attentions.list_attentions().values()):
        assert family["backends"] == list(info["backends"])
        assert family["reference_backend"] == info["reference_backend"]
    assert list(load_results(tiny_run)["backend"]) == ["torch", "sdpa"]


@pytest.mark.parametrize("edit, named", [
    (lambda m: m["methods"].update(speedup_interval="bootstrap-95"), "speedup_interval bootstrap-95"),
    (lambda m: [m.pop("schema_version"), m.pop("methods")], "unrecorded"),  # a run from before methods were kept
])
def test_resume_refuses_a_run_made_by_other_methods(tiny_run, tmp_path, capsys, edit, named):
    copy = tmp_path / "cpu" / "copy.csv"
    copy.parent.mkdir()
    lines = tiny_run.read_text().splitlines(keepends=True)
    copy.write_text("".join(lines[:-1]))  # one case left to run
    metadata = json.loads(tiny_run.with_suffix(".json").read_text())
    edit(metadata)
    copy.with_suffix(".json").write_text(json.dumps(metadata))
    with pytest.raises(SystemExit) as exc:
        cli.main(["--resume", str(copy), "--results-dir", str(tmp_path)])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and named in message and "start a new run" in message, message
    assert copy.read_text() == "".join(lines[:-1])  # nothing written
