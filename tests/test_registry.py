"""Registries by name: lookups, suggestions, lazy built-ins, and plugins found through entry points,
among them the real CLI with the plugin package in tests/fixtures/plugin installed beside it."""

import logging
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from coa import registry
from coa.errors import ConfigError
from coa.models.registry import BACKENDS, form, load_model
from coa.registry import Registry
from conftest import REPO, run_cli

PLUGIN = REPO / "tests" / "fixtures" / "plugin"
GROUP = "coa-tests.widgets"


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Writes modules (or packages: "pkg/mod") into a directory on sys.path and forgets them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, text: str) -> None:
        path = tmp_path / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        written.append(name.replace("/", ".").removesuffix(".__init__"))

    yield write
    for name in written:
        sys.modules.pop(name, None)


def plugins(monkeypatch, *points: tuple[str, str]) -> None:
    """Make `points` (name, "module:attr") the entry points of GROUP."""
    found = [EntryPoint(name, value, GROUP) for name, value in points]
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in found if p.group == group])


def test_lookup_suggests_the_closest_name():
    widgets = Registry("widget", GROUP)
    widgets.register("sprocket", "turns")(object())
    widgets.register("gear", "meshes")(object())
    with pytest.raises(ConfigError, match=r"unknown widget 'sprockt'; did you mean 'sprocket'\? \(choose from: gear, sprocket\)"):
        widgets.get("sprockt")
    with pytest.raises(ConfigError, match=r"^unknown widget 'zzz'; choose from: gear, sprocket$"):
        widgets.get("zzz")
    assert "gear" in widgets and "zzz" not in widgets


def test_descriptions_come_from_the_decorator_or_the_docstring():
    widgets = Registry("widget", GROUP)

    @widgets.register("plain")
    def plain():
        """First line.

        More detail."""

    widgets.register("told", "said so")(lambda: None)
    assert {e.name: e.description for e in widgets.items()} == {"plain": "First line.", "told": "said so"}


def test_a_name_registered_twice_for_different_objects_is_an_error():
    widgets = Registry("widget", GROUP)
    thing = object()
    widgets.register("a")(thing)
    widgets.register("a")(thing)  # the same object again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        widgets.register("a")(object())


def test_builtins_are_the_modules_of_a_package_imported_on_first_use(modules):
    modules("widget_registry", f"from coa.registry import Registry\nWIDGETS = Registry('widget', {GROUP!r}, package='widget_parts')\n")
    modules("widget_parts/__init__", "")
    for module, name in (("widget_parts/gears", "gear"), ("widget_parts/cogs", "cog")):
        modules(module, f"from widget_registry import WIDGETS\nWIDGETS.register({name!r}, 'a {name}')(lambda: None)\n")
    from widget_registry import WIDGETS

    assert not {"widget_parts", "widget_parts.gears", "widget_parts.cogs"} & sys.modules.keys()
    assert WIDGETS.get("gear")() is None
    assert {"widget_parts.gears", "widget_parts.cogs"} <= sys.modules.keys()
    assert [(e.name, e.description) for e in WIDGETS.items()] == [("cog", "a cog"), ("gear", "a gear")]


def test_plugins_load_only_when_asked_for_or_listed(modules, monkeypatch):
    modules("widget_plugin", "class Cog:\n    'A plugin cog.'\n")
    plugins(monkeypatch, ("cog", "widget_plugin:Cog"))
    widgets = Registry("widget", GROUP)
    widgets.register("gear", "meshes")(object())
    widgets.get("gear")
    assert "widget_plugin" not in sys.modules
    cog = widgets.get("cog")
    assert cog.__name__ == "Cog" and "widget_plugin" in sys.modules
    assert [(e.name, e.description, e.plugin) for e in widgets.items()] == [
        ("gear", "meshes", ""), ("cog", "A plugin cog.", "widget_plugin:Cog")]


def test_a_broken_plugin_is_a_warning_in_listings_and_an_error_naming_it_when_asked_for(monkeypatch, caplog):
    plugins(monkeypatch, ("broken", "no_such_module_for_coa:Thing"))
    widgets = Registry("widget", GROUP)
    widgets.register("gear")(object())
    with caplog.at_level(logging.WARNING, logger="coa.registry"):
        assert widgets.names() == ["gear"]
    assert caplog.messages == ["widget plugin 'broken' (no_such_module_for_coa:Thing) could not be loaded: "
                               "ModuleNotFoundError: No module named 'no_such_module_for_coa'"]
    with pytest.raises(ConfigError, match=r"^widget plugin 'broken' \(no_such_module_for_coa:Thing\) could not be loaded"):
        widgets.get("broken")


def test_a_plugin_cannot_take_a_builtin_name(modules, monkeypatch, caplog):
    modules("widget_impostor", "GEAR = 'impostor'\n")
    plugins(monkeypatch, ("gear", "widget_impostor:GEAR"))
    widgets = Registry("widget", GROUP)
    gear = object()
    widgets.register("gear")(gear)
    with caplog.at_level(logging.WARNING, logger="coa.registry"):
        assert widgets.names() == ["gear"]
    assert widgets.get("gear") is gear and "the name 'gear' is taken" in caplog.text


def test_model_names_are_a_backend_and_what_its_factory_takes():
    assert load_model("scripted", window=500).context_window == 500
    with pytest.raises(ConfigError, match=r"model 'gguf' needs a path: gguf:PATH"):
        load_model("gguf")
    with pytest.raises(ConfigError, match=r"model 'openai:' needs a name: openai:NAME"):
        load_model("openai:")
    with pytest.raises(ConfigError, match=r"model 'scripted' takes nothing after the colon"):
        load_model("scripted:fast")
    with pytest.raises(ConfigError, match=r"unknown model 'opnai'; did you mean 'openai'\?"):
        load_model("opnai:gpt-4o")
    assert [form(e.name, e.obj) for e in BACKENDS.items()] == ["embedded", "gguf:PATH", "openai:NAME", "reader", "scripted"]


# -- the plugin package, installed, with the real CLI ---------------------------------------------------
def install(project: Path, target: Path) -> None:
    """What `pip install --target` makes of a one-module project: the module beside a dist-info that
    holds its entry points. Built here from pyproject.toml, so no build backend is needed."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    name, version = meta["project"]["name"], meta["project"]["version"]
    info = target / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()) + "\n"
        for group, points in meta["project"]["entry-points"].items()
    ))
    for module in meta["tool"]["setuptools"]["py-modules"]:
        (target / f"{module}.py").write_text((project / f"{module}.py").read_text())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The fixture plugin installed, and a second package whose strategy cannot be imported."""
    target = tmp_path_factory.mktemp("site")
    install(PLUGIN, target)
    broken = tmp_path_factory.mktemp("broken")
    (broken / "pyproject.toml").write_text(
        '[project]\nname = "coa-broken-plugin"\nversion = "1.0"\n'
        '[project.entry-points."chainofagents.strategies"]\nbroken = "coa_missing_module:Broken"\n'
        '[tool.setuptools]\npy-modules = []\n'
    )
    install(broken, target)
    return target


@pytest.fixture
def with_plugins(site, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(site))


def test_listings_show_the_plugins_and_survive_a_broken_one(with_plugins):
    result = run_cli("strategies")
    assert result.returncode == 0, result.stderr
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "\necho " in out and "Asks the model the question alone" in out and "[plugin: coa-echo-plugin]" in out
    assert "times=1" in out and "int, 1 to 3" in out and "how often the model's reply is repeated" in out
    assert "strategy plugin 'broken' (coa_missing_module:Broken, from coa-broken-plugin) could not be loaded" in err
    assert "Traceback" not in err
    models = run_cli("models").stdout.decode()
    assert "plugin-backend:WORDS" in models and "always replies with the words after the colon" in models
    assert "\necho-set " in run_cli("datasets").stdout.decode()


def test_a_plugin_strategy_and_backend_answer_through_the_cli(with_plugins, story):
    # Three times: an answer that is one phrase exactly twice over is said once (coa.answers.once).
    result = run_cli("ask", story, "Who?", "-s", "echo", "--model", "scripted", "--opt", "times=3", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().count('"scripted output 1 scripted output 1 scripted output 1"') == 1
    result = run_cli("ask", story, "Who?", "-s", "echo", "--model", "plugin-backend:hello there")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "hello there"
    bad = run_cli("ask", story, "Who?", "-s", "echo", "--model", "scripted", "--opt", "times=9")
    assert bad.returncode == 2 and "option times must be 1 to 3, not 9" in bad.stderr.decode()


def test_a_broken_plugin_asked_for_by_name_is_one_error_line(with_plugins, story):
    result = run_cli("ask", story, "Who?", "-s", "broken", "--model", "scripted")
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err
    assert err.startswith("error: strategy plugin 'broken' (coa_missing_module:Broken, from coa-broken-plugin) "
                          "could not be loaded: ModuleNotFoundError")


def test_a_plugin_dataset_and_metric_score_an_evaluation(with_plugins, tmp_path):
    result = run_cli("eval", "-d", "echo-set", "-s", "echo", "--model", "plugin-backend:WHERE", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    table = result.stdout.decode()
    assert "metric shouted" in table and "| echo | 50.0 |" in table  # "WHERE" is right for the first question only


def test_without_the_plugin_its_names_are_unknown(story):
    result = run_cli("ask", story, "Who?", "-s", "echoo", "--model", "scripted")
    assert result.returncode == 2 and "unknown strategy 'echoo'" in result.stderr.decode()
    result = run_cli("ask", story, "Who?", "--model", "embeded")
    assert result.returncode == 2 and "unknown model 'embeded'; did you mean 'embedded'?" in result.stderr.decode()


def test_a_strategy_that_defines_neither_solve_nor_solve_many_is_refused_when_defined():
    from coa.strategies import Strategy

    with pytest.raises(TypeError, match="must define solve or solve_many"):
        class Idle(Strategy):  # noqa: F841  (refused as the class statement runs)
            name = "idle"
            description = "solves nothing"

    class Single(Strategy):
        name = "single"
        description = "defines solve"

        async def solve(self, session, task):
            return "ok", {}

    from coa import ScriptedModel, Task
    assert Single(ScriptedModel()).run(Task(document="text", query="q?")).answer == "ok"
