"""Tests of autotl.backbones.registry: entry points, plugin files, and plugins that fail to load."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from autotl.backbones import Backbone, BackboneFamily
from autotl.errors import AutotlError
from autotl.backbones.registry import ENTRY_POINT_GROUP, Registry, load_plugin_file, load_registry

from conftest import TINY_PLUGIN, autotl_command

BUILT_INS = {"resnet50", "bert", "efficientnet_lite0"}


def one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry([TINY_PLUGIN])


# --------------------------------------------------------------------------- entry points and files


def test_built_ins_come_from_entry_points(registry):
    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert BUILT_INS <= set(declared)
    for name in BUILT_INS:
        backbone = registry.get(name)
        assert isinstance(backbone, Backbone) and backbone.name == name
        assert registry.sources[name] == f"entry point {declared[name]}"
        assert declared[name].startswith("autotl_plugins.")
    assert registry.get("bert").modality == "text"
    assert registry.get("resnet50").modality == registry.get("efficientnet_lite0").modality == "image"
    assert registry.failures == []


def test_plugin_file_is_loaded(registry):
    [backbone] = load_plugin_file(TINY_PLUGIN)
    assert isinstance(backbone, Backbone)
    assert (backbone.name, backbone.modality, type(backbone).__name__) == ("tiny_cnn", "image", "TinyCNN")
    assert registry.get("tiny_cnn").name == "tiny_cnn"
    assert registry.sources["tiny_cnn"] == f"file {TINY_PLUGIN}"
    assert set(registry.backbones) == BUILT_INS | {"tiny_cnn"}


def test_a_plugin_file_may_define_several_backbones_but_not_import_them(tmp_path):
    path = tmp_path / "two.py"
    path.write_text(
        "from autotl.backbones import Backbone\n"
        "from autotl_plugins.resnet50 import ResNet50  # imported: not this file's plugin\n"
        "class A(Backbone):\n    name = 'net_a'\n    modality = 'image'\n"
        "    def build(self, weights, preprocessor): ...\n    def blocks(self, model): return []\n"
        "class B(A):\n    name = 'net_b'\n    modality = 'text'\n"
    )
    assert sorted(b.name for b in load_plugin_file(path)) == ["net_a", "net_b"]


def test_unknown_name_lists_available(registry):
    with pytest.raises(AutotlError) as excinfo:
        registry.get("vgg99")
    message = one_line(excinfo, "'vgg99'")
    for name in BUILT_INS | {"tiny_cnn"}:
        assert name in message


def test_empty_registry_says_none_available():
    with pytest.raises(AutotlError) as excinfo:
        Registry().get("resnet50")
    one_line(excinfo, "'resnet50'", "none")


@pytest.mark.parametrize("source, fragment", [
    ("import os\ndef broken(:\n    pass\n", "SyntaxError"),
    ("raise ImportError('needs libfoo')\n", "ImportError: needs libfoo"),
    ("import autotl_no_such_module_xyz\n", "autotl_no_such_module_xyz"),
    ("x = 1 / 0\n", "ZeroDivisionError"),
])
def test_plugin_file_failing_to_import_is_one_line_naming_the_file(tmp_path, source, fragment):
    path = tmp_path / "my_plugin.py"
    path.write_text(source)
    with pytest.raises(AutotlError) as excinfo:
        load_plugin_file(path)
    one_line(excinfo, str(path), fragment)
    with pytest.raises(AutotlError):  # and through load_registry too
        load_registry([path])


def test_plugin_file_without_backbone_subclass(tmp_path):
    path = tmp_path / "empty_plugin.py"
    path.write_text("from autotl.backbones import Backbone  # imported, not defined here\n\nclass Other:\n    pass\n")
    with pytest.raises(AutotlError) as excinfo:
        load_plugin_file(path)
    one_line(excinfo, str(path), "no Backbone subclass")


def test_plugin_file_whose_backbone_is_incomplete_names_what_is_missing(tmp_path):
    path = tmp_path / "half.py"
    path.write_text("from autotl.backbones import Backbone\n"
                    "class Half(Backbone):\n    name = 'half'\n    modality = 'image'\n")
    with pytest.raises(AutotlError) as excinfo:
        load_plugin_file(path)
    one_line(excinfo, str(path), "Half", "blocks(), build()", "implement them")


def test_plugin_whose_search_space_ignores_the_weights_is_refused_in_one_line(tmp_path):
    """The space may depend on the weights (BERT's depth range does), so autotl passes them."""
    path = tmp_path / "old.py"
    path.write_text("from autotl.backbones import Backbone\n"
                    "class Old(Backbone):\n    name = 'old'\n    modality = 'image'\n"
                    "    def build(self, weights, preprocessor): ...\n    def blocks(self, model): return []\n"
                    "    def search_space(self): return {}\n")
    registry = load_registry([path])
    with pytest.raises(AutotlError) as excinfo:
        registry.get("old")
    one_line(excinfo, str(path), "search_space(self, weights)")


def test_plugin_whose_constructor_raises_is_one_line(tmp_path):
    path = tmp_path / "ctor.py"
    path.write_text("from autotl.backbones import Backbone\n"
                    "class Picky(Backbone):\n    name = 'picky'\n    modality = 'image'\n"
                    "    def __init__(self):\n        raise OSError('license file missing')\n"
                    "    def build(self, weights, preprocessor): ...\n    def blocks(self, model): return []\n")
    with pytest.raises(AutotlError) as excinfo:
        load_registry([path])
    one_line(excinfo, str(path), "Picky()", "OSError: license file missing")


def test_missing_or_non_python_plugin_file(tmp_path):
    with pytest.raises(AutotlError) as excinfo:
        load_plugin_file(tmp_path / "absent.py")
    one_line(excinfo, "absent.py", "not found")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AutotlError) as excinfo:
        load_plugin_file(text)
    one_line(excinfo, "notes.txt")


def test_plugin_with_invalid_name_is_recorded_as_failed(tmp_path):
    path = tmp_path / "badname.py"
    path.write_text(
        "from autotl.backbones import Backbone\n"
        "class Bad(Backbone):\n    name = 'has space'\n    modality = 'image'\n"
        "    def build(self, weights, preprocessor): ...\n    def blocks(self, model): return []\n"
        "class Odd(Backbone):\n    name = 'odd'\n    modality = 'audio'\n"
        "    def build(self, weights, preprocessor): ...\n    def blocks(self, model): return []\n"
    )
    registry = load_registry([path])
    assert {f.name for f in registry.failures} == {"has space", "odd"}
    assert "has space" not in registry.backbones and "odd" not in registry.backbones
    assert BUILT_INS <= set(registry.backbones)
    with pytest.raises(AutotlError) as excinfo:
        registry.get("odd")
    one_line(excinfo, "'odd'", "failed to load", "modality")


# --------------------------------------------------------------------------- an installed plugin that fails


@pytest.fixture(scope="module")
def broken_install(tmp_path_factory) -> Path:
    """A real installed distribution whose entry point fails to import."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[autotl.backbones]\nbroken = broken_plugin_mod:Nope\n")
    (site / "broken_plugin_mod.py").write_text('raise ImportError("needs libfoo")\n')
    return site


@pytest.fixture(scope="module")
def broken_runs(broken_install, tmp_path_factory):
    """`autotl plugins --json` and `autotl search --backbone broken`, run side by side."""
    cwd = tmp_path_factory.mktemp("cwd")
    data = cwd / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(broken_install), os.environ.get("PYTHONPATH")]))}
    env.pop("AUTOTL_DEBUG", None)
    commands = {
        "plugins": ["plugins", "--json"],
        "search": ["search", str(data), "--backbone", "broken", "--store", f"sqlite:///{cwd / 's.db'}"],
    }

    def run(args):
        return subprocess.run([*autotl_command(), *args], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=180)

    with ThreadPoolExecutor(2) as pool:
        futures = {key: pool.submit(run, args) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


def test_broken_installed_plugin_is_listed_as_failed(broken_runs):
    result = broken_runs["plugins"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    listing = json.loads(result.stdout)
    assert BUILT_INS <= {b["name"] for b in listing["backbones"]}
    assert "broken" not in {b["name"] for b in listing["backbones"]}
    [failed] = [f for f in listing["failed"] if f["name"] == "broken"]
    assert failed["error"] == "ImportError: needs libfoo"
    assert "broken_plugin_mod:Nope" in failed["source"]


def test_search_with_broken_plugin_is_one_line(broken_runs):
    result = broken_runs["search"]
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error")
    assert "'broken'" in lines[0] and "needs libfoo" in lines[0]


# --------------------------------------------------------------------------- families (PREFIX:VARIANT)


class _TinyFamily(BackboneFamily):
    """A family of tiny CNNs, one per variant; 'wrong' names its backbone badly, 'boom' raises."""

    prefix = "tiny"

    def variants(self):
        return ["a", "b"]

    def backbone(self, variant):
        if variant == "boom":
            raise RuntimeError("the catalogue is down")
        [tiny] = load_plugin_file(TINY_PLUGIN)
        tiny.name = "other:a" if variant == "wrong" else f"tiny:{variant.lower()}"
        return tiny


def test_a_family_makes_its_backbones_on_demand_under_both_spellings():
    registry = Registry()
    registry.add_family(_TinyFamily(), "test")
    backbone = registry.get("tiny:A")
    assert backbone.name == "tiny:a" and registry.get("tiny:a") is backbone is registry.get("tiny:A")
    assert registry.sources["tiny:a"] == "test"


@pytest.mark.parametrize("name, fragments", [
    ("tiny:wrong", ["'tiny'", "'other:a'", "not tiny:"]),
    ("tiny:boom", ["'tiny'", "failed to make 'boom'", "RuntimeError", "the catalogue is down"]),
    ("huge:a", ["unknown backbone family 'huge'", "tiny:NAME", "autotl plugins"]),
])
def test_family_lookups_that_fail_are_one_line(name, fragments):
    registry = Registry()
    registry.add_family(_TinyFamily(), "test")
    with pytest.raises(AutotlError) as excinfo:
        registry.get(name)
    one_line(excinfo, *fragments)


def test_a_family_without_a_usable_prefix_is_a_load_failure():
    registry = Registry()
    family = _TinyFamily()
    family.prefix = "ti ny"
    registry.add_family(family, "test")
    assert not registry.families and "prefix" in registry.failures[0].error


def test_the_keras_family_comes_from_an_entry_point(registry):
    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert declared["keras"] == "autotl_plugins.keras_applications:KerasApplications"
    assert registry.family_sources["keras"] == f"entry point {declared['keras']}"
    assert registry.get("keras:MobileNet").name == "keras:MobileNet"
