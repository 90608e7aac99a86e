"""Plugins (``attentions.plugins``, ``--plugin``): a module of one's own registers families or backends; one that
breaks the contract is refused with one line naming it and the rule, and the registry stays as it was.

Each test writes its plugin modules into a folder of its own on ``sys.path`` and leaves the registry, the loaded
plugins and ``sys.modules`` as it found them (its own modules removed)."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap

import pytest

import attentions
import attentions.plugins as plugins
from attentions import PluginError
from bench import cli
from registry_cases import registry_kept

PLAIN = '''
from attentions import FullAttention, register


@register
class {name}(FullAttention):
    family = "{family}"
'''


@pytest.fixture
def write_plugin(tmp_path, monkeypatch):
    """A writer of plugin modules (name, source) into a folder on sys.path; afterwards the registry, the loaded
    plugins and the imported modules are as before."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written = []

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    with registry_kept():
        yield write
    for name in written:
        sys.modules.pop(name, None)


def test_a_plugin_registers_a_family_and_is_recorded(write_plugin):
    module = write_plugin("plain_plugin", PLAIN.format(name="Plain", family="plain"))
    plugin = attentions.load_plugin(module)
    assert (plugin.module, plugin.source, plugin.families, plugin.backends) == (module, "--plugin", ("plain",), ())
    assert plugin.distribution is None and plugin.version is None  # on sys.path, not installed
    assert attentions.build("plain", dim=16, num_heads=2).family == "plain"
    assert attentions.loaded_plugins()[-1] is plugin and attentions.load_plugin(module) is plugin  # once
    assert json.loads(json.dumps(plugin.to_json()))["families"] == ["plain"]


def test_a_plugin_adds_a_backend_to_a_built_in_family(write_plugin):
    module = write_plugin("backend_plugin", '''
        from attentions import Backend, FullAttention
        from attentions.core import sdpa_attention

        FullAttention.backends["my_sdpa"] = Backend("my_sdpa", sdpa_attention, "SDPA under another name")
    ''')
    plugin = attentions.load_plugin(module)
    assert plugin.families == () and plugin.backends == (("full", "my_sdpa"),)
    assert "my_sdpa" in attentions.list_attentions()["full"]["backends"]


def refused(write_plugin, name: str, source: str) -> str:
    """The one-line message of the plugin's refusal; the registry is as before it."""
    before = attentions.list_attentions()
    module = write_plugin(name, source)
    with pytest.raises(PluginError) as refusal:
        attentions.load_plugin(module)
    message = str(refusal.value)
    assert "\n" not in message and message.startswith(f"plugin {name!r} (--plugin): "), message
    assert attentions.list_attentions() == before
    return message


@pytest.mark.parametrize("name, source, cause", [
    ("syntax_plugin", "def broken(:\n", "does not import: SyntaxError"),
    ("raising_plugin", "raise RuntimeError('no weights here')\n", "does not import: RuntimeError: no weights here"),
    ("missing_dep_plugin", "import not_a_module_anywhere\n",
     "does not import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("empty_plugin", "VALUE = 1\n", "registers nothing: no family (attentions.register) and no backend"),
    ("taken_plugin", PLAIN.format(name="Again", family="bra"),
     "registers the family 'bra', which already exists (attentions.bra.BiLevelRoutingAttention)"),
    ("replacing_plugin", '''
        from attentions import Backend, FullAttention
        from attentions.core import sdpa_attention

        FullAttention.backends["sdpa"] = Backend("sdpa", sdpa_attention, "mine")
     ''', "replaces the backend 'sdpa' of 'full', which already exists"),
    ("misnamed_backend_plugin", '''
        from attentions import Backend, FullAttention
        from attentions.core import sdpa_attention

        FullAttention.backends["mine"] = Backend("other", sdpa_attention, "mine")
     ''', "adds full.backends['mine']"),
    ("unbuildable_plugin", PLAIN.format(name="Unbuildable", family="unbuildable") + '''
    def __init__(self, dim, num_heads, backend="torch"):
        raise OSError("checkpoint.pt not found")
''', "family 'unbuildable' does not build with its defaults (dim 64, 2 heads, on the meta device as the planner "
       "builds it): OSError: checkpoint.pt not found"),
    ("uncounted_plugin", PLAIN.format(name="Uncounted", family="uncounted") + '''
    def count_macs(self, batch, height, width):
        raise NotImplementedError
''', "family 'uncounted' has no count_macs"),
])
def test_a_plugin_that_breaks_the_contract_is_refused_in_one_line(write_plugin, name, source, cause):
    message = refused(write_plugin, name, source)
    assert cause in message, message


def test_a_refused_plugin_leaves_the_built_in_family_it_tried_to_replace(write_plugin):
    refused(write_plugin, "taken_plugin", PLAIN.format(name="Again", family="bra"))
    assert type(attentions.build("bra", dim=16, num_heads=2)) is attentions.BiLevelRoutingAttention


def test_a_refused_plugin_registers_none_of_its_families(write_plugin):
    """The first family is fine, the second cannot be built: neither stays."""
    source = PLAIN.format(name="Good", family="good") + PLAIN.format(name="Bad", family="bad") + '''
    def __init__(self, dim, num_heads, backend="torch"):
        raise ValueError("bad defaults")
'''
    assert "family 'bad' does not build" in refused(write_plugin, "two_family_plugin", source)
    assert "good" not in attentions.list_attentions()


@pytest.mark.parametrize("name", ["", "has space", "3d", "a..b", "mod:"])
def test_a_name_that_is_no_module_is_refused(name):
    with pytest.raises(PluginError, match="not a module name"):
        attentions.load_plugin(name)


def test_plugins_come_from_flags_then_the_environment_once_each():
    environ = {plugins.ENVIRONMENT_VARIABLE: " b , c,, a "}
    assert plugins.plugin_modules(["a", "b"], environ) == [
        ("a", "--plugin"), ("b", "--plugin"), ("c", plugins.ENVIRONMENT_VARIABLE)]


def test_an_installed_entry_point_is_loaded_and_named(write_plugin, monkeypatch):
    module = write_plugin("entry_plugin", PLAIN.format(name="Entry", family="entry"))
    points = importlib.metadata.EntryPoints([importlib.metadata.EntryPoint(
        name="mine", value=module, group=plugins.ENTRY_POINT_GROUP)])
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points.select(group=group))
    [plugin] = attentions.load_plugins([], environ={})
    assert plugin.source == "entry point 'mine'" and plugin.families == ("entry",)


def test_module_colon_function_calls_the_function_after_the_import(write_plugin):
    module = write_plugin("deferred_plugin", '''
        from attentions import FullAttention, register


        def install():
            register(type("Deferred", (FullAttention,), {"family": "deferred"}))
    ''')
    assert module not in sys.modules
    assert attentions.load_plugin(f"{module}:install").families == ("deferred",)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------

def test_list_with_a_plugin_shows_its_family(write_plugin, capsys):
    module = write_plugin("listed_plugin", PLAIN.format(name="Listed", family="listed"))
    assert cli.main(["list", "--plugin", module]) == 0
    assert "listed (Listed), reference backend 'torch'" in capsys.readouterr().out


def test_a_broken_plugin_ends_the_command_with_exit_2_and_one_line(write_plugin, capsys, monkeypatch):
    module = write_plugin("broken_cli_plugin", "raise ImportError('needs CUDA 13')\n")
    monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, module)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--gpu", "cpu", "--preset", "quick", "--families", "bra", "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"run_bench.py: error: plugin {module!r} ({plugins.ENVIRONMENT_VARIABLE}): does not import: "
                   f"ImportError: needs CUDA 13")
    monkeypatch.delenv(plugins.ENVIRONMENT_VARIABLE)
    assert cli.main(["--gpu", "cpu", "--preset", "quick", "--families", "bra", "--dry-run"]) == 0  # built-ins fine


def test_a_sweep_with_a_plugin_records_it_and_its_report_says_where_it_came_from(write_plugin, tmp_path, capsys):
    module = write_plugin("swept_plugin", PLAIN.format(name="Swept", family="swept"))
    results = tmp_path / "results"
    assert cli.main(["--plugin", module, "--gpu", "cpu", "--preset", "quick", "--families", "swept", "bra",
                     "--backends", "torch", "--topk", "4", "--kv-modes", "identity", "--phase", "fwd",
                     "--min-time", "0", "--quiet", "--run-id", "plugged", "--results-dir", str(results)]) == 0
    metadata = json.loads((results / "cpu" / "plugged.json").read_text())
    assert metadata["plugins"] == [{"module": module, "source": "--plugin", "distribution": None, "version": None,
                                    "families": ["swept"], "backends": []}]
    assert metadata["argv"][:2] == ["--plugin", module]
    readme = (tmp_path / "reports" / "cpu" / "plugged" / "README.md").read_text()
    assert f"- plugin not installed (module {module}): family swept" in readme
    main = (tmp_path / "reports" / "cpu" / "plugged" / "tables" / "main.md").read_text()
    assert any(line.startswith("| swept |") for line in main.splitlines()), main
    capsys.readouterr()
