"""The CLI in real subprocesses: help, one-line errors with the right exit codes, and a
store that keeps everything it held when a command fails."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import TINY_PLUGIN, autotl_command, make_dataset

SUBCOMMANDS = ("search", "searches", "trials", "best", "export", "predict", "plugins")
TABLES = ("searches", "trials", "epoch_metrics", "artifacts", "autotl_meta")
SEARCH_NAME = "done"


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
    url = w["url"]
    tiny = ["--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16", "--max-trials", "1",
            "--epochs", "1", "--workdir", w["root"] / "runs"]

    def search(data, *extra):
        return ["search", data, *tiny, "--store", url, *extra]

    return {
        "unknown_backbone": (["search", w["data"], "--backbone", "nope", "--store", url], 1, ["'nope'", "resnet50"]),
        "missing_data": (search(w["root"] / "absent"), 1, ["absent", "does not exist"]),
        "empty_data_folder": (search(w["empty"]), 1, ["no class folders"]),
        "one_class": (search(w["one_class"]), 1, ["only one class", "'0'"]),
        "class_without_images": (search(w["no_images"]), 1, ["holds no readable images", "1"]),
        "searches_bad_store": (["searches", "--store", "nosuchdriver://x"], 1, ["nosuchdriver"]),
        "trials_bad_store": (["trials", SEARCH_NAME, "--store", "nosuchdriver://x"], 1, ["nosuchdriver"]),
        "best_store_folder_missing": (["best", SEARCH_NAME, "--store", "sqlite:////nonexistent/dir/x.db"], 1,
                                      ["/nonexistent/dir"]),
        "trials_unknown_search": (["trials", "999", "--store", url], 1, ["'999'"]),
        "best_unknown_search": (["best", "no-such-search", "--store", url], 1, ["'no-such-search'"]),
        "export_unknown_search": (["export", "999", "--out", w["root"] / "exported", "--store", url], 1, ["'999'"]),
        "space_does_not_parse": (search(w["data"], "--space", w["space_bad"]), 2, ["does not parse", "bad.yaml"]),
        "space_unknown_hyperparameter": (search(w["data"], "--space", w["space_unknown"]), 2, ["'learning_rate'"]),
        "duplicate_search_name": (search(w["data"], "--name", SEARCH_NAME), 1, ["already exists", f"'{SEARCH_NAME}'"]),
    }


CLICK_USAGE_CASES = {
    "max_trials_zero": (["search", "{data}", "--backbone", "tiny_cnn", "--max-trials", "0"], "--max-trials"),
    "missing_backbone_option": (["search", "{data}"], "--backbone"),
    "bad_tuner_choice": (["search", "{data}", "-b", "tiny_cnn", "--tuner", "grid"], "--tuner"),
    "val_split_out_of_range": (["search", "{data}", "-b", "tiny_cnn", "--val-split", "1.5"], "--val-split"),
    "export_without_out": (["export", SEARCH_NAME], "--out"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A store holding one real completed search, bad inputs, and every error command's result."""
    root = tmp_path_factory.mktemp("cli")
    data = make_dataset("mnist5k", root / "digits", "--per-class", "5")
    w = {"root": root, "data": data, "db": root / "autotl.db", "url": f"sqlite:///{root / 'autotl.db'}"}

    done = run(["search", data, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                "--max-trials", "1", "--epochs", "1", "--name", SEARCH_NAME, "--store", w["url"],
                "--workdir", root / "runs"], cwd=root)
    assert done.returncode == 0, done.stderr
    w["search_output"] = done

    w["empty"] = root / "empty"
    w["empty"].mkdir()
    w["one_class"] = root / "one_class"
    shutil.copytree(data / "0", w["one_class"] / "0")
    w["no_images"] = root / "no_images"
    shutil.copytree(data / "0", w["no_images"] / "0")
    (w["no_images"] / "1").mkdir()
    (w["no_images"] / "1" / "readme.txt").write_text("not an image")
    w["space_bad"] = root / "bad.yaml"
    w["space_bad"].write_text("head_units: {values: [64, 128\nhead_lr: [\n")
    w["space_unknown"] = root / "unknown.yaml"
    w["space_unknown"].write_text("learning_rate: {min: 0.001, max: 0.01}\n")

    w["before"] = snapshot(w["db"])
    commands = {name: args for name, (args, _, _) in cases(w).items()}
    commands.update({name: [a.replace("{data}", str(data)) for a in args] + ["--store", w["url"]]
                     for name, (args, _) in CLICK_USAGE_CASES.items()})
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


def test_help_of_search_shows_store_and_space_options(tmp_path):
    result = run(["search", "-h"], tmp_path)
    assert result.returncode == 0
    for option in ("--store", "--space", "--max-trials", "--plugin", "AUTOTL_STORE"):
        assert option in result.stdout, option


# --------------------------------------------------------------------------- the completed search


def test_fixture_search_completed(world):
    before = world["before"]
    assert len(before["searches"]) == 1
    [trial] = before["trials"]
    conn = sqlite3.connect(world["db"])
    try:
        status, name = conn.execute("SELECT status, name FROM searches").fetchone()
        trial_status = conn.execute("SELECT status FROM trials").fetchone()[0]
    finally:
        conn.close()
    assert (status, name, trial_status) == ("completed", SEARCH_NAME, "completed")
    assert before["epoch_metrics"], "epoch metrics were logged"
    assert "1/1 trials completed" in world["search_output"].stdout


# --------------------------------------------------------------------------- user errors
# (Each `search` error costs a Keras import, about 5 s: the search-space and data checks
# themselves are unit-tested in test_space.py / test_data.py.)


@pytest.mark.parametrize("name", list(cases(defaultdict(Path))))
def test_user_error_is_one_line(world, name):
    _, code, fragments = cases(world)[name]
    result = world["results"][name]
    no_traceback(result)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "internal error" not in lines[0]


@pytest.mark.parametrize("name", list(CLICK_USAGE_CASES))
def test_click_usage_error(world, name):
    _, option = CLICK_USAGE_CASES[name]
    result = world["results"][name]
    no_traceback(result)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert option in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error")


def test_export_of_unknown_search_writes_nothing(world):
    assert world["results"]["export_unknown_search"].returncode == 1
    assert not (world["root"] / "exported").exists()


def test_no_error_command_changed_the_store(world):
    before, after = world["before"], world["after"]
    for table in TABLES:
        assert after[table] == before[table], f"table {table} changed"


def test_store_still_readable_by_the_cli(world):
    result = run(["best", SEARCH_NAME, "--store", world["url"]], world["root"])
    assert result.returncode == 0, result.stderr
    assert f"search '{SEARCH_NAME}'" in result.stdout and "best trial 1" in result.stdout
