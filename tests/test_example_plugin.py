"""The example plugin (examples/plugin, the family ``maxbra``) installed with pip into a fresh virtual environment,
as a user installs theirs: found through its entry point, swept next to the built-in BRA, reported, and passed by
the conformance kit; broken copies of it fail the kit naming the rule they break.

The fresh environment has no packages of its own besides the plugin: it sees this environment's (torch, the
suite) through a ``.pth`` file, so that nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import bench

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "examples" / "plugin"

pytestmark = pytest.mark.slow  # a virtual environment, a pip install, a sweep and the kit: about a minute


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the example plugin pip-installed (without its build isolation: offline);
    its python."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages (torch, the suite, pip, setuptools) behind the fresh one's, .pth files included
    Path(site, "outer.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    source = shutil.copytree(PLUGIN, root / "source")  # the build's own files go there, not into examples/
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--no-index", str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def run(python: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd), **env}
    return subprocess.run([python, str(REPO / "run_bench.py"), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_the_installed_plugin_is_swept_beside_bra_and_reported(venv, tmp_path):
    shown = run(venv, "list", cwd=tmp_path)
    assert shown.returncode == 0 and "maxbra (MaxRoutedAttention), reference backend 'torch'" in shown.stdout
    proc = run(venv, "--gpu", "cpu", "--preset", "quick", "--families", "bra", "maxbra", "--backends", "torch", "sdpa",
               "--topk", "4", "--kv-modes", "identity", "--phase", "fwd", "--min-time", "0", "--quiet",
               "--run-id", "plugged", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = bench.load_results(tmp_path / "runs" / "results" / "cpu" / "plugged.csv")
    assert sorted(set(zip(frame["family"], frame["backend"]))) == [
        ("bra", "sdpa"), ("bra", "torch"), ("maxbra", "sdpa"), ("maxbra", "torch")]
    assert frame["status"].isin(["ok", "noisy"]).all(), frame[["case_key", "status", "status_detail"]]
    # the same MACs as BRA: only what the router compares differs
    assert frame.groupby("family")["gmacs"].first().nunique() == 1
    [plugin] = json.loads((tmp_path / "runs" / "results" / "cpu" / "plugged.json").read_text())["plugins"]
    assert plugin == {"module": "maxbra", "source": "entry point 'maxbra'", "distribution": "maxbra-example",
                      "version": "0.1.0", "families": ["maxbra"], "backends": []}
    readme = (tmp_path / "runs" / "reports" / "cpu" / "plugged" / "README.md").read_text()
    assert "- plugin maxbra-example 0.1.0 (module maxbra): family maxbra" in readme


def test_the_installed_plugin_passes_the_kit(venv, tmp_path):
    proc = run(venv, "check-attention", "maxbra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("maxbra: conforms")


BREAKAGES = {  # what a copy of the plugin appends to its module -> the rule the kit names
    "wrong output shape": ('''
_forward = MaxRoutedAttention.forward
MaxRoutedAttention.forward = lambda self, x, **kw: _forward(self, x, **kw)[:, 1:]
''', "FAIL  nhwc"),
    "a backend that differs from its reference": ('''
import dataclasses

def _off(attend):
    def attend_off(*args):
        out, weights = attend(*args)
        return out * 1.01, weights
    return attend_off

MaxRoutedAttention.backends["sdpa"] = dataclasses.replace(MaxRoutedAttention.backends["sdpa"],
                                                          attend=_off(MaxRoutedAttention.backends["sdpa"].attend))
''', "FAIL  backend sdpa"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_copy_fails_the_kit_naming_the_rule(venv, tmp_path, breakage):
    """The copy comes first on PYTHONPATH, so it is the module imported (the installed one stays as it was)."""
    copy = tmp_path / "broken"
    shutil.copytree(PLUGIN, copy)
    appended, rule = BREAKAGES[breakage]
    (copy / "maxbra.py").write_text((copy / "maxbra.py").read_text() + appended)
    proc = run(venv, "check-attention", "maxbra", cwd=tmp_path, PYTHONPATH=str(copy))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert rule in proc.stdout and "maxbra: " in proc.stdout.splitlines()[-1] and "broken" in \
        proc.stdout.splitlines()[-1], proc.stdout
