"""`autotl trials` sorting and filtering, and --json on every listing command, through the real CLI
on a store written through the Store API (a real search's store is listed in test_search/test_tensorboard)."""

from __future__ import annotations

import json

import pytest

from autotl.store import COMPLETED, FAILED, INTERRUPTED, Store, Trial

from conftest import TINY_PLUGIN, run_cli

# number: (status, value, duration_s, unfreeze_depth, head_lr, dropout, pooling)
ACCURACY_TRIALS = {
    1: (COMPLETED, 0.50, 5.0, 0, 0.0062135540967083866, 0.30000000000000004, "avg"),
    2: (FAILED, None, 1.0, 2, 0.001, 0.1, "flatten"),
    3: (COMPLETED, 0.80, 9.0, 2, 0.002, 0.2, "avg"),
    4: (INTERRUPTED, None, 2.0, 1, 0.003, 0.0, "flatten"),
    5: (COMPLETED, 0.65, 3.0, 2, 0.004, 0.4, "flatten"),
    6: ("running", None, None, 2, 0.005, 0.5, "avg"),
}
LOSS_TRIALS = {1: (COMPLETED, 0.9, 1.0, 0, 0.001, 0.0, "avg"), 2: (COMPLETED, 0.3, 1.0, 1, 0.001, 0.0, "avg"),
               3: (COMPLETED, 0.5, 1.0, 2, 0.001, 0.0, "avg")}


def add_search(store: Store, name: str, objective: str, direction: str, trials: dict) -> None:
    search = store.create_search(name=name, backbone="tiny_cnn", weights="none", modality="image",
                                 dataset_path="/data", dataset_fingerprint="0" * 64, labels=["a", "b"], config={},
                                 objective=objective, direction=direction, workdir="/runs")
    for number, (status, value, duration, depth, head_lr, dropout, pooling) in trials.items():
        hps = {"pooling": pooling, "unfreeze_depth": depth, "head_lr": head_lr, "dropout": dropout,
               "augment": False, "head_units": 128}
        row = store.start_trial(search.id, str(number), hps)
        assert row.number == number
        if status != "running":
            store.finish_trial(row.id, status, value=value, best_phase="head" if value else None,
                               best_epoch=1 if value else None, metrics={objective: value} if value else None,
                               error="boom" if status == FAILED else None)
        with store.session() as session:  # durations chosen by the test, not by the clock
            session.get(Trial, row.id).duration_s = duration


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('listing') / 'autotl.db'}"
    store = Store(url)
    add_search(store, "acc", "val_accuracy", "max", ACCURACY_TRIALS)
    add_search(store, "loss", "val_loss", "min", LOSS_TRIALS)
    store.close()
    return url


def listed(store_url: str, search: str, *options: str) -> list[int]:
    result = run_cli("trials", search, "--store", store_url, "--json", *options, check=True)
    return [row["number"] for row in json.loads(result.stdout)]


@pytest.mark.parametrize("options, expected", [
    ((), [1, 2, 3, 4, 5, 6]),
    (("--sort", "number"), [1, 2, 3, 4, 5, 6]),
    (("--sort", "value"), [3, 5, 1, 2, 4, 6]),  # best first, then the trials without a value by number
    (("--sort", "duration"), [3, 1, 5, 4, 2, 6]),  # longest first, the running trial last
    (("--status", "completed"), [1, 3, 5]),
    (("--status", "completed", "--status", "interrupted"), [1, 3, 4, 5]),
    (("--status", "running"), [6]),
    (("--status", "failed"), [2]),
    (("--where", "unfreeze_depth=2"), [2, 3, 5, 6]),
    (("--where", "unfreeze_depth=2", "--where", "pooling=avg"), [3, 6]),
    (("--where", "dropout=0.3"), [1]),  # 0.30000000000000004 is 0.3
    (("--where", "head_lr=0.00621"), [1]),  # as the table prints it
    (("--where", "head_lr=0.006"), []),
    (("--where", "augment=false", "--where", "head_units=128"), [1, 2, 3, 4, 5, 6]),
    (("--where", "augment=true"), []),
    (("--where", "unfreeze_depth=2", "--status", "completed", "--sort", "value"), [3, 5]),
    (("--where", "unfreeze_depth=2", "--status", "completed", "--sort", "value", "--limit", "1"), [3]),
    (("--sort", "duration", "--limit", "2"), [3, 1]),
    (("--limit", "10"), [1, 2, 3, 4, 5, 6]),
])
def test_trials_sort_filter_and_limit_with_json(store_url, options, expected):
    assert listed(store_url, "acc", *options) == expected


def test_sort_by_value_follows_the_objective_direction(store_url):
    assert listed(store_url, "loss", "--sort", "value") == [2, 3, 1]  # val_loss: lowest first
    assert listed(store_url, "loss", "--sort", "value", "--limit", "1") == [2]


def test_json_rows_are_whole_trials(store_url):
    [row] = json.loads(run_cli("trials", "acc", "--store", store_url, "--json", "--where", "unfreeze_depth=0",
                               check=True).stdout)
    assert row["status"] == COMPLETED and row["value"] == pytest.approx(0.5) and row["duration_s"] == 5.0
    assert row["hyperparameters"]["pooling"] == "avg"


def test_table_is_sorted_and_filtered_too(store_url):
    result = run_cli("trials", "acc", "--store", store_url, "--sort", "value", "--status", "completed", check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["trial", "status", "val_accuracy"]
    assert [line.split()[0] for line in lines[1:]] == ["3", "5", "1"]
    assert lines[1].split()[2] == "0.8000" and lines[1].split()[4] == "9.0"
    empty = run_cli("trials", "acc", "--store", store_url, "--where", "head_lr=0.006", check=True)
    assert empty.stdout.strip() == "(none)"


@pytest.mark.parametrize("options, message", [
    (("--where", "foo=1"), "Error: --where: search 'acc' has no hyperparameter 'foo' (it has augment, dropout, "
                            "head_lr, head_units, pooling, unfreeze_depth)"),
    (("--where", "unfreeze_depth"), "Error: --where takes NAME=VALUE (e.g. unfreeze_depth=2), not 'unfreeze_depth'"),
    (("--where", "=2"), "Error: --where takes NAME=VALUE (e.g. unfreeze_depth=2), not '=2'"),
])
def test_bad_where_is_a_one_line_usage_error(store_url, options, message):
    result = run_cli("trials", "acc", "--store", store_url, *options)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == message
    assert result.stdout == ""


@pytest.mark.parametrize("options", [("--status", "done"), ("--sort", "speed"), ("--limit", "0")])
def test_bad_choices_are_usage_errors(store_url, options):
    result = run_cli("trials", "acc", "--store", store_url, *options)
    assert result.returncode == 2
    assert options[0] in result.stderr and result.stderr.strip().splitlines()[-1].startswith("Error")
    assert "Traceback" not in result.stderr


def test_every_listing_command_prints_json(store_url, tmp_path):
    searches = json.loads(run_cli("searches", "--store", store_url, "--json", check=True).stdout)
    assert [s["name"] for s in searches] == ["acc", "loss"]
    assert searches[0]["trials"] == 6 and searches[0]["best_value"] == pytest.approx(0.8)
    best = json.loads(run_cli("best", "acc", "--store", store_url, "--json", check=True).stdout)
    assert best["number"] == 3 and best["objective"] == "val_accuracy"
    cache = json.loads(run_cli("cache", "ls", "--cache-dir", tmp_path / "cache", "--json", check=True).stdout)
    assert cache["entries"] == [] and cache["total_mb"] == 0
    plugins = json.loads(run_cli("plugins", "--plugin", TINY_PLUGIN, "--json", check=True).stdout)
    assert "tiny_cnn" in [b["name"] for b in plugins["backbones"]]


def test_a_long_backbone_path_is_shortened_in_the_table_and_whole_in_json(tmp_path):
    """Issue 29, 9: a `kerashub:` folder made the searches table as wide as its path."""
    url = f"sqlite:///{tmp_path / 'autotl.db'}"
    backbone = "kerashub:/home/someone/work/keras_hub/presets/bert_tiny_en_uncased"
    Store(url).create_search(name="hub", backbone=backbone, weights="preset", modality="text", dataset_path="/data",
                             dataset_fingerprint="0" * 64, labels=["a", "b"], config={}, objective="val_accuracy",
                             direction="max", workdir="/runs")
    table = run_cli("searches", "--store", url, check=True).stdout.splitlines()
    assert "kerashub:/…/presets/bert_tiny_en_uncased" in table[1] and backbone not in table[1]
    assert json.loads(run_cli("searches", "--store", url, "--json", check=True).stdout)[0]["backbone"] == backbone
