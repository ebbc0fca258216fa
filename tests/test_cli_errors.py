"""The CLI in real subprocesses: help, one-line errors with the right exit codes, and a
store that keeps everything it held when a command fails.

One real tiny search runs first, on digits with a few files mixed in that cannot be
used (a corrupt JPEG, an empty PNG, a 32-bit TIFF) or must be converted (CMYK,
palette, 16-bit, gray+alpha): it must skip the first kind with a count and keep the
second. Then every user error runs against its own copy of that store, so each case
proves on its own that a failing command leaves the store as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY_PLUGIN, autotl_command, make_dataset

TINY_TEXT_PLUGIN = REPO / "tests" / "plugins" / "tiny_text.py"
SUBCOMMANDS = ("search", "searches", "trials", "best", "export", "predict", "plugins")
TABLES = ("searches", "trials", "epoch_metrics", "artifacts", "autotl_meta")
SEARCH_NAME = "done"
PENDING_NAME = "pending"  # a search whose only trial failed: nothing to export
STORE = "{store}"  # replaced by the URL of the case's own copy of the store
# Files of the searched folder that cannot be used (skipped) and that are converted (kept).
UNUSABLE = {"5/corrupt.jpg": "not an image format PIL can decode", "6/empty.png": "0 bytes",
            "7/deep32.tif": "beyond the 16-bit range"}
CONVERTED = ("1/cmyk.jpg", "2/palette.gif", "3/deep16.png", "4/gray_alpha.png")


# `python -c NOTING_IMPORTS ARGS` is `autotl ARGS` that, on its way out, writes which heavy modules it imported.
NOTING_IMPORTS = ("import atexit, sys; atexit.register(lambda: open('imported', 'w').write(' '.join("
                  "m for m in ('keras', 'tensorflow', 'torch') if m in sys.modules))); "
                  "from autotl.cli import main; main()")


def run(args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in ("AUTOTL_DEBUG", "AUTOTL_STORE"):
        env.pop(name, None)
    return subprocess.run([*autotl_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def snapshot(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES}
    finally:
        conn.close()


def cases(w: dict) -> dict[str, tuple[list, int, list[str]]]:
    """name -> (arguments, exit code, fragments the one error line must hold)."""
    root, bad = w["root"], w["root"] / "bad"
    tiny = ["--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16", "--max-trials", "1",
            "--epochs", "1", "--workdir", root / "runs"]
    tiny_text = ["--backbone", "tiny_text", "--plugin", TINY_TEXT_PLUGIN, "--max-trials", "1", "--epochs", "1",
                 "--workdir", root / "runs"]

    def search(data, *extra):
        return ["search", data, *tiny, "--store", STORE, *extra]

    def text_search(file, *extra):
        return ["search", bad / file, *tiny_text, "--store", STORE, *extra]

    def space_file(key):
        return root / f"space_{key}.yaml"  # SPACE_VALUES[key], written by the world fixture

    def with_plugin(file, backbone="tiny_cnn"):
        return ["search", w["two_classes"], "--backbone", backbone, "--plugin", bad / file, "--image-size", "16",
                "--store", STORE, "--workdir", root / "runs"]

    return {
        # --- the data folder
        "missing_data": (search(root / "absent"), 2, ["absent", "does not exist"]),
        "data_is_a_file_for_an_image_backbone": (search(bad / "some_empty.csv"), 1,
                                                 ["some_empty.csv", "is a file", "one sub-folder per class"]),
        "empty_data_folder": (search(w["empty"]), 1, ["no class folders"]),
        "one_class": (search(w["one_class"]), 1, ["only one class", "'0'", "at least two"]),
        "one_example_per_class": (search(w["single_examples"]), 1,
                                  ["single example", "'0', '1'", "validate", "--val-data"]),
        "class_without_images": (search(w["no_images"]), 1, ["holds no readable images", "1"]),
        "class_whose_images_all_fail": (search(w["all_unreadable"]), 1,
                                        ["all_unreadable/1", "every image in it failed to decode", "junk.png"]),
        "corrupt_image_strict": (search(w["strict_corrupt"], "--strict"), 1,
                                 ["corrupt.jpg", "not an image format PIL can decode", "without --strict"]),
        "zero_byte_image_strict": (search(w["strict_empty"], "--strict"), 1,
                                   ["empty.png", "0 bytes", "without --strict"]),
        "unsupported_pixels_strict": (search(w["strict_mode"], "--strict"), 1,
                                      ["deep32.tif", "beyond the 16-bit range", "8- or 16-bit"]),
        # --- text tables (the tiny text backbone)
        "csv_without_text_column": (text_search("no_text_col.csv"), 1,
                                    ["no column 'text'", "'sentence'", "--text-col"]),
        "csv_without_label_column": (text_search("no_label_col.csv"), 1, ["no column 'label'", "'tag'"]),
        "csv_only_empty_texts": (text_search("only_empty.csv"), 1, ["every row", "empty text", "only_empty.csv:2"]),
        "csv_empty_text_strict": (text_search("some_empty.csv", "--strict"), 1,
                                  ["1 row", "empty text", "some_empty.csv:3", "without --strict"]),
        "csv_class_with_only_empty_texts": (text_search("class_all_empty.csv"), 1,
                                            ["class 'b'", "only rows with empty text", "class_all_empty.csv:3"]),
        "jsonl_list_as_label": (text_search("list_label.jsonl"), 1,
                                ["list_label.jsonl:4", "'label'", "JSON list", "one label"]),
        # --- validation data
        "val_data_missing": (search(w["data"], "--val-data", root / "absent_val"), 2,
                             ["validation data", "absent_val", "does not exist"]),
        # --- backbones and plugin files
        "unknown_backbone": (["search", w["data"], "--backbone", "nope", "--store", STORE], 2,
                             ["'nope'", "resnet50", "autotl plugins"]),
        "unknown_backbone_family": (["search", w["data"], "--backbone", "nope:Net", "--store", STORE], 2,
                                    ["'nope'", "keras:NAME", "autotl plugins"]),
        "unknown_keras_network": (["search", w["data"], "--backbone", "keras:ResNet49", "--store", STORE], 1,
                                  ["'ResNet49'", "keras.applications", "ConvNeXtTiny"]),
        "keras_network_without_named_blocks": (["search", w["data"], "--backbone", "keras:InceptionV3",
                                                "--store", STORE], 1,
                                               ["keras:InceptionV3", "blocks", "write a plugin"]),
        "keras_network_images_too_small": (["search", w["data"], "--backbone", "keras:Xception", "--weights", "none",
                                            "--image-size", "32", "--store", STORE], 1,
                                           ["keras:Xception", "at least 71x71", "32x32"]),
        "plugin_syntax_error": (with_plugin("syntax_error.py"), 1,
                                ["syntax_error.py", "failed to import", "SyntaxError"]),
        "plugin_import_error": (with_plugin("import_error.py"), 1,
                                ["import_error.py", "ModuleNotFoundError", "autotl_no_such_module_xyz"]),
        "plugin_without_backbone": (with_plugin("no_backbone.py"), 1,
                                    ["no_backbone.py", "defines no Backbone subclass"]),
        "plugin_build_raises": (with_plugin("broken_build.py", "broken_build"), 1,
                                ["'broken_build'", "failed to build", "weights server down"]),
        "plugin_model_takes_two_inputs": (with_plugin("two_inputs.py", "two_inputs"), 1,
                                          ["'two_inputs'", "takes 2 inputs", "one tensor", "dict"]),
        # --- search-space files
        "space_does_not_parse": (search(w["data"], "--space", w["space_bad"]), 2,
                                 ["does not parse", "bad.yaml", "line 2"]),
        "space_unknown_hyperparameter": (search(w["data"], "--space", w["space_unknown"]), 2,
                                         ["'learning_rate'", "known:"]),
        "space_file_missing": (search(w["data"], "--space", root / "absent.yaml"), 2,
                               ["cannot read search-space file", "absent.yaml"]),
        # issue 17, 5: values outside their hyperparameter's domain, refused before any search row
        "space_depth_above_blocks": (search(w["data"], "--space", space_file("depth_above_blocks")), 2,
                                     ["'unfreeze_depth'", "max 50", "3 blocks", "'tiny_cnn'", "0 to 3"]),
        "space_dropout_range": (search(w["data"], "--space", space_file("dropout_range")), 2,
                                ["'dropout'", "min -0.5", "a number in [0, 1)"]),
        "space_dropout_fixed": (search(w["data"], "--space", space_file("dropout_fixed")), 2,
                                ["'dropout'", "1.5", "a number in [0, 1)"]),
        "space_head_units_zero": (search(w["data"], "--space", space_file("head_units_zero")), 2,
                                  ["'head_units'", "value 0", "a whole number >= 1"]),
        "space_step_zero": (search(w["data"], "--space", space_file("step_zero")), 2,
                            ["'head_layers'", "step 0", "a whole number >= 1"]),
        "space_sampling_cubic": (search(w["data"], "--space", space_file("sampling_cubic")), 2,
                                 ["'head_lr'", "sampling 'cubic'", "linear, log, reverse_log"]),
        # --- stores
        "searches_bad_store": (["searches", "--store", "nosuchdriver://x"], 1, ["nosuchdriver"]),
        "trials_bad_store": (["trials", SEARCH_NAME, "--store", "nosuchdriver://x"], 1, ["nosuchdriver"]),
        "best_store_folder_missing": (["best", SEARCH_NAME, "--store", "sqlite:////nonexistent/dir/x.db"], 1,
                                      ["/nonexistent/dir"]),
        "store_is_a_folder": (["searches", "--store", w["store_folder"]], 1, ["cannot open store", "store_folder"]),
        "store_is_not_a_database": (["trials", SEARCH_NAME, "--store", w["not_a_db"]], 1,
                                    ["cannot open store", "not_a_db.db", "not a database"]),
        # --- searches and exports
        "trials_unknown_search": (["trials", "999", "--store", STORE], 1, ["'999'", "autotl searches"]),
        "best_unknown_search": (["best", "no-such-search", "--store", STORE], 1, ["'no-such-search'"]),
        "export_unknown_search": (["export", "999", "--out", root / "exported", "--store", STORE], 1, ["'999'"]),
        "best_without_completed_trial": (["best", PENDING_NAME, "--store", STORE], 1,
                                         [f"'{PENDING_NAME}'", "no completed trial"]),
        "export_without_completed_trial": (["export", PENDING_NAME, "--out", root / "exported_pending",
                                            "--store", STORE], 1,
                                           [f"'{PENDING_NAME}'", "no completed trial", "1 failed", "autotl trials"]),
        "export_out_under_a_file": (["export", SEARCH_NAME, "--out", w["a_file"] / "sub", "--store", STORE], 2,
                                    ["cannot create output folder", "a_file.txt is a file", "--out"]),
        "export_out_not_empty": (["export", SEARCH_NAME, "--out", w["root"] / "stores", "--store", STORE], 2,
                                 ["stores", "not empty", "holds no autotl export", "--out"]),
        "duplicate_name_other_options": (search(w["data"], "--name", SEARCH_NAME, "--epochs", "2"), 2,
                                         ["already exists", f"'{SEARCH_NAME}'", "epochs"]),
    }


# The search-space files of issue 17, 5 (the tiny backbone has 3 blocks).
SPACE_VALUES = {
    "depth_above_blocks": "unfreeze_depth: {min: 0, max: 50}\n",
    "dropout_range": "dropout: {min: -0.5, max: 2}\n",
    "dropout_fixed": "dropout: 1.5\n",
    "head_units_zero": "head_units: {values: [0]}\n",
    "step_zero": "head_layers: {min: 0, max: 2, step: 0}\n",
    "sampling_cubic": "head_lr: {min: 1.0e-4, max: 1.0e-2, sampling: cubic}\n",
}


CLICK_USAGE_CASES = {
    "max_trials_zero": (["search", "{data}", "--backbone", "tiny_cnn", "--max-trials", "0"], "--max-trials"),
    "missing_backbone_option": (["search", "{data}"], "--backbone"),
    "bad_tuner_choice": (["search", "{data}", "-b", "tiny_cnn", "--tuner", "grid"], "--tuner"),
    "val_split_out_of_range": (["search", "{data}", "-b", "tiny_cnn", "--val-split", "1.5"], "--val-split"),
    "export_without_out": (["export", SEARCH_NAME], "--out"),
    "export_out_is_a_file": (["export", SEARCH_NAME, "--out", "{a_file}"], "--out"),
}


def write_images(data: Path) -> None:
    """Add to the digits the files a search must convert (CONVERTED) and those it must skip (UNUSABLE)."""
    gray = np.asarray(Image.open(next((data / "0").glob("*.png"))).convert("L"))
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    Image.fromarray(rgb).convert("CMYK").save(data / "1" / "cmyk.jpg")
    Image.fromarray(rgb).quantize(colors=8).save(data / "2" / "palette.gif")
    Image.fromarray(gray.astype(np.uint16) * 257).save(data / "3" / "deep16.png")
    Image.fromarray(np.stack([gray, np.full_like(gray, 200)], axis=-1), "LA").save(data / "4" / "gray_alpha.png")
    write_unusable(data)


def write_unusable(data: Path, only: str | None = None) -> None:
    """The UNUSABLE files (or just the one named `only`) under `data`."""
    for relative in UNUSABLE:
        if only is not None and not relative.endswith(only):
            continue
        path = data / relative if only is None else data / "1" / only
        if path.name == "corrupt.jpg":
            path.write_bytes(os.urandom(300))
        elif path.name == "empty.png":
            path.write_bytes(b"")
        else:  # 32-bit integer pixels, far beyond 16-bit values
            Image.fromarray((np.arange(64, dtype=np.int32).reshape(8, 8) * 100_000)).save(path)


def two_classes(data: Path, out: Path) -> Path:
    for label in ("0", "1"):
        shutil.copytree(data / label, out / label)
    return out


def write_text_tables(bad: Path) -> None:
    tables = {
        "no_text_col.csv": "sentence,label\nfine film,pos\ndull film,neg\n",
        "no_label_col.csv": "text,tag\nfine film,pos\ndull film,neg\n",
        "only_empty.csv": "text,label\n,pos\n  ,neg\n",
        "some_empty.csv": "text,label\nfine film,pos\n ,neg\ndull film,neg\n",
        "class_all_empty.csv": "text,label\nfine film,a\n,b\n  ,b\ngood film,a\n",
        "list_label.jsonl": "".join(json.dumps({"text": f"film {i}", "label": label}) + "\n"
                                    for i, label in enumerate([1, "1", "cat", [1, 2]])),
    }
    for name, content in tables.items():
        (bad / name).write_text(content)


def write_plugins(bad: Path) -> None:
    header = "from autotl.backbones import Backbone\n"
    plugins = {
        "syntax_error.py": "import os\ndef broken(:\n    pass\n",
        "import_error.py": "import autotl_no_such_module_xyz\n",
        "no_backbone.py": header + "class NotABackbone:\n    name = 'x'\n",
        "broken_build.py": header + "class BrokenBuild(Backbone):\n    name = 'broken_build'\n"
                                    "    modality = 'image'\n    def build(self, weights, preprocessor):\n"
                                    "        raise RuntimeError('weights server down')\n"
                                    "    def blocks(self, model):\n        return []\n",
        "two_inputs.py": header + "import keras\nclass TwoInputs(Backbone):\n    name = 'two_inputs'\n"
                                  "    modality = 'image'\n    def build(self, weights, preprocessor):\n"
                                  "        a, b = keras.Input((16, 16, 3)), keras.Input((16, 16, 3))\n"
                                  "        return keras.Model([a, b], keras.layers.Add(name='add')([a, b]))\n"
                                  "    def blocks(self, model):\n        return [[model.get_layer('add')]]\n",
    }
    for name, content in plugins.items():
        (bad / name).write_text(content)


def add_search_without_completed_trial(url: str, data: Path, workdir: Path) -> None:
    """A search whose only trial failed, written through the Store API as a search would."""
    from autotl.store import FAILED, Store

    store = Store(url)
    try:
        row = store.create_search(name=PENDING_NAME, backbone="tiny_cnn", weights="none", modality="image",
                                  dataset_path=str(data), dataset_fingerprint="0" * 64, labels=["0", "1"],
                                  config={"plugin_files": [str(TINY_PLUGIN)]}, objective="val_accuracy",
                                  direction="max", workdir=str(workdir / PENDING_NAME))
        trial = store.start_trial(row.id, "0", {"head_lr": 0.001})
        store.finish_trial(trial.id, FAILED, error="RuntimeError: out of memory")
        store.finish_search(row.id, FAILED, "no trial completed")
    finally:
        store.close()


# Cases that only the slow checks run (-m slow): each costs a Keras import, and CI keeps a case of each kind.
SLOW_CASES = {"one_example_per_class", "class_without_images", "zero_byte_image_strict", "unsupported_pixels_strict",
              "csv_without_label_column", "csv_empty_text_strict", "csv_class_with_only_empty_texts",
              "jsonl_list_as_label", "keras_network_without_named_blocks", "keras_network_images_too_small",
              "plugin_import_error", "plugin_without_backbone", "plugin_model_takes_two_inputs", "space_dropout_range",
              "space_dropout_fixed", "space_head_units_zero", "space_step_zero", "space_sampling_cubic"}


def case_params() -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name
            for name in cases(defaultdict(Path))]


def copy_store(db: Path, copy: Path) -> str:
    source, target = sqlite3.connect(db), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return f"sqlite:///{copy}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, request) -> dict:
    """A store holding one real completed search, bad inputs, and every error command's result (without
    SLOW_CASES' when no slow test of this module runs)."""
    with_slow = any(item.get_closest_marker("slow") for item in request.session.items
                    if getattr(item, "module", None) is request.module)
    root = tmp_path_factory.mktemp("cli")
    data = make_dataset("mnist5k", root / "digits", "--per-class", "5")
    w = {"root": root, "data": data, "db": root / "autotl.db", "url": f"sqlite:///{root / 'autotl.db'}",
         "good_images": sum(1 for _ in data.rglob("*.png"))}
    write_images(data)

    done = run(["search", data, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                "--max-trials", "1", "--epochs", "1", "--name", SEARCH_NAME, "--store", w["url"],
                "--workdir", root / "runs"], cwd=root)
    assert done.returncode == 0, done.stderr
    w["search_output"] = done
    add_search_without_completed_trial(w["url"], data, root / "runs")

    w["empty"] = root / "empty"
    w["empty"].mkdir()
    w["one_class"] = root / "one_class"
    shutil.copytree(data / "0", w["one_class"] / "0")
    w["no_images"] = root / "no_images"
    shutil.copytree(data / "0", w["no_images"] / "0")
    (w["no_images"] / "1").mkdir()
    (w["no_images"] / "1" / "readme.txt").write_text("not an image")
    w["two_classes"] = two_classes(data, root / "two_classes")
    w["single_examples"] = root / "single_examples"
    for label in ("0", "1"):
        (w["single_examples"] / label).mkdir(parents=True)
        shutil.copy(sorted((data / label).glob("*.png"))[0], w["single_examples"] / label)
    w["all_unreadable"] = root / "all_unreadable"
    shutil.copytree(data / "0", w["all_unreadable"] / "0")
    (w["all_unreadable"] / "1").mkdir()
    (w["all_unreadable"] / "1" / "junk.png").write_bytes(b"junk")
    for key, name in (("strict_corrupt", "corrupt.jpg"), ("strict_empty", "empty.png"),
                      ("strict_mode", "deep32.tif")):
        w[key] = two_classes(data, root / key)
        write_unusable(w[key], only=name)
    bad = root / "bad"
    bad.mkdir()
    write_text_tables(bad)
    write_plugins(bad)
    w["space_bad"] = root / "bad.yaml"
    w["space_bad"].write_text("head_units: {values: [64, 128\nhead_lr: [\n")
    w["space_unknown"] = root / "unknown.yaml"
    w["space_unknown"].write_text("learning_rate: {min: 0.001, max: 0.01}\n")
    for key, text in SPACE_VALUES.items():
        (root / f"space_{key}.yaml").write_text(text)
    w["store_folder"] = root / "store_folder"
    w["store_folder"].mkdir()
    w["not_a_db"] = root / "not_a_db.db"
    w["not_a_db"].write_text("just some notes, not SQLite\n")
    w["a_file"] = root / "a_file.txt"
    w["a_file"].write_text("a regular file\n")

    w["before"] = snapshot(w["db"])
    (root / "stores").mkdir()
    w["stores"], commands = {}, {}
    for name, (args, _, _) in cases(w).items():
        if name in SLOW_CASES and not with_slow:
            continue
        w["stores"][name] = root / "stores" / f"{name}.db"
        url = copy_store(w["db"], w["stores"][name])
        commands[name] = [url if arg == STORE else arg for arg in args]
    commands.update({name: [a.replace("{data}", str(data)).replace("{a_file}", str(w["a_file"])) for a in args]
                     + ["--store", w["url"]] for name, (args, _) in CLICK_USAGE_CASES.items()})
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, args, root) for name, args in commands.items()}
        w["results"] = {name: future.result() for name, future in futures.items()}
    w["after"] = snapshot(w["db"])
    return w


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- help


def test_main_help_lists_every_subcommand(tmp_path):
    result = run(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert result.stdout.startswith("Usage:")
    for name in SUBCOMMANDS:
        assert f"  {name} " in result.stdout or f"  {name}\n" in result.stdout, name


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(tmp_path, command):
    result = run([command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    first = result.stdout.splitlines()[0]
    assert first.startswith("Usage:") and f" {command} " in f"{first} ", first
    assert "--help" in result.stdout
    assert not (tmp_path / "autotl.db").exists(), "--help must not create a store"


def test_a_keras_backend_that_is_not_installed_is_one_line(tmp_path):
    """KERAS_BACKEND=torch where torch is missing (as after the README's install): not an internal error."""
    hide_torch = "import sys; sys.modules['torch'] = None; from autotl.cli import main; main()"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "torch"}
    env.pop("AUTOTL_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", hide_torch, "search", str(tmp_path), "--backbone", "resnet50"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: KERAS_BACKEND=torch needs the torch package, which is not installed: install it, or unset "
        "KERAS_BACKEND to use TensorFlow"]


@pytest.mark.parametrize("args, fragment", [
    (["{absent}", "-b", "resnet50"], "dataset path"),
    (["{here}", "-b", "resnet50", "--val-data", "{absent}"], "validation data path"),
    (["{here}", "-b", "nope"], "unknown backbone 'nope'"),
    (["{here}", "-b", "nope:Net"], "unknown backbone family 'nope'"),
    (["{here}", "-b", "tiny_cnn", "--plugin", "{absent}"], "plugin file not found"),
    (["{here}", "-b", "resnet50", "--space", "{absent}"], "cannot read search-space file"),
])
def test_search_refuses_what_needs_no_keras_before_importing_it(tmp_path, args, fragment):
    """Issue 29, 5: these errors came after TensorFlow's import (7-8 s), with exit 1."""
    paths = {"{absent}": str(tmp_path / "absent"), "{here}": str(tmp_path)}
    env = {key: value for key, value in os.environ.items() if key != "AUTOTL_DEBUG"}
    result = subprocess.run([sys.executable, "-c", NOTING_IMPORTS, "search", *(paths.get(arg, arg) for arg in args)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert result.returncode == 2, result.stderr
    assert (tmp_path / "imported").read_text() == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and fragment in result.stderr
    assert not (tmp_path / "autotl.db").exists()


@pytest.mark.parametrize("out", ["stores", "a_file.txt/sub"])
def test_export_refuses_a_bad_out_before_importing_keras(world, out):
    """Issue 29, 5: a non-empty --out was refused after 14 s of export work."""
    result = subprocess.run([sys.executable, "-c", NOTING_IMPORTS, "export", SEARCH_NAME, "--out", world["root"] / out,
                             "--store", world["url"]], capture_output=True, text=True, cwd=world["root"], timeout=180)
    assert result.returncode == 2, result.stderr
    assert (world["root"] / "imported").read_text() == ""
    assert result.stderr.count("\n") == 1 and "choose another --out" in result.stderr


def test_help_of_search_shows_store_and_space_options(tmp_path):
    result = run(["search", "-h"], tmp_path)
    assert result.returncode == 0
    for option in ("--store", "--space", "--max-trials", "--plugin", "AUTOTL_STORE"):
        assert option in result.stdout, option


# --------------------------------------------------------------------------- the completed search


def search_row(db: Path, name: str) -> tuple[str, dict]:
    conn = sqlite3.connect(db)
    try:
        status, config = conn.execute("SELECT status, config FROM searches WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return status, json.loads(config)


def test_fixture_search_completed(world):
    before = world["before"]
    assert len(before["searches"]) == 2  # the completed search, and the one whose trial failed
    conn = sqlite3.connect(world["db"])
    try:
        trials = conn.execute("SELECT s.name, t.status FROM trials t JOIN searches s ON s.id = t.search_id "
                              "ORDER BY t.id").fetchall()
    finally:
        conn.close()
    assert trials == [(SEARCH_NAME, "completed"), (PENDING_NAME, "failed")]
    assert search_row(world["db"], SEARCH_NAME)[0] == "completed"
    assert before["epoch_metrics"], "epoch metrics were logged"
    assert "1/1 trials completed" in world["search_output"].stdout


def test_unusable_images_are_skipped_with_a_count_and_converted_ones_kept(world):
    """Not a crash, not silence: the search runs, says how many files it skipped and records which."""
    result = world["search_output"]
    no_traceback(result)
    [warning] = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert f"skipped {len(UNUSABLE)} unusable examples" in warning and "--strict" in warning
    _, config = search_row(world["db"], SEARCH_NAME)
    assert config["skipped_count"] == len(UNUSABLE)
    skipped = {Path(source).relative_to(world["data"]).as_posix(): reason
               for source, reason in config["skipped_examples"]}
    assert set(skipped) == set(UNUSABLE)
    for relative, fragment in UNUSABLE.items():
        assert fragment in skipped[relative], skipped[relative]
    # Every good digit and every converted mode (CMYK, palette, 16-bit, gray+alpha) was used.
    assert config["train_examples"] + config["val_examples"] == world["good_images"] + len(CONVERTED)


# --------------------------------------------------------------------------- user errors
# (Each `search` error costs a Keras import, about 5 s: the search-space and data checks
# themselves are unit-tested in test_space.py / test_data.py.)


@pytest.mark.parametrize("name", case_params())
def test_user_error_is_one_line(world, name):
    _, code, fragments = cases(world)[name]
    result = world["results"][name]
    no_traceback(result)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "internal error" not in lines[0]
    assert not result.stdout.strip(), result.stdout


@pytest.mark.parametrize("name", case_params())
def test_user_error_leaves_the_store_unchanged(world, name):
    """Each case ran against its own copy of the store: every row of every table is as it was."""
    after = snapshot(world["stores"][name])
    for table in TABLES:
        assert after[table] == world["before"][table], f"table {table} changed"


@pytest.mark.parametrize("name", list(CLICK_USAGE_CASES))
def test_click_usage_error(world, name):
    _, option = CLICK_USAGE_CASES[name]
    result = world["results"][name]
    no_traceback(result)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert option in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error")


def test_failed_exports_write_nothing(world):
    assert world["results"]["export_unknown_search"].returncode == 1
    assert not (world["root"] / "exported").exists()
    assert world["results"]["export_without_completed_trial"].returncode == 1
    assert not (world["root"] / "exported_pending").exists()
    assert world["a_file"].read_text() == "a regular file\n"


def test_bad_store_paths_are_left_as_they_were(world):
    assert list(world["store_folder"].iterdir()) == []
    assert world["not_a_db"].read_text() == "just some notes, not SQLite\n"
    assert not Path("/nonexistent").exists()


def test_no_error_command_changed_the_store(world):
    before, after = world["before"], world["after"]
    for table in TABLES:
        assert after[table] == before[table], f"table {table} changed"


def test_store_still_readable_by_the_cli(world):
    result = run(["best", SEARCH_NAME, "--store", world["url"]], world["root"])
    assert result.returncode == 0, result.stderr
    assert f"search '{SEARCH_NAME}'" in result.stdout and "best trial 1" in result.stdout
