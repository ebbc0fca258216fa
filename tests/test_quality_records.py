"""The quality benchmark's records (benchmarks/quality_records.py), without training: hand-made records.

A long benchmark lands in pieces only if a restart finds exactly the runs it may skip, and a report never
mixes runs of different code. The end-to-end run (and its restart) is tests/test_quality_benchmark.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import quality_records as records  # noqa: E402

CODE, OTHER_CODE, RECIPE = "c0de00000000", "c0de11111111", "rec1pe000000"


def record(workload="images", seed=0, kind="autotl", test=0.8, val=0.82, code=CODE, recipe=RECIPE, **extra):
    run = {"workload": workload, "seed": seed, "kind": kind, "test_accuracy": test, "val_accuracy": val,
           "code_digest": code, "recipe_digest": recipe, "revision": "abc", "settings": {"sizes": 1},
           "seconds": 100.0, "command": "autotl search ...", "machine": {"cpu": "Test CPU"}}
    if kind != records.RECIPE:
        run.update(time_limit_s=200, over_limit_pct=-1.0, configurations=3,
                   val_test_gap=None if val is None else round(val - test, 4))
    return {**run, **extra}


def test_a_run_is_found_only_for_its_own_code_settings_and_seed(tmp_path):
    log = records.RunLog(tmp_path / "runs.jsonl")
    log.append(record())
    log.append(record(kind="recipe", code=OTHER_CODE))
    assert log.find(record())["test_accuracy"] == 0.8
    assert log.find(record(code=OTHER_CODE)) is None  # autotl's code changed: run again
    assert log.find(record(seed=1)) is None
    assert log.find(record(settings={"sizes": 2})) is None
    assert log.find(record(kind="no-portfolio")) is None
    # The recipe's runs stay valid whatever autotl's code, while the recipe itself is unchanged.
    assert log.find(record(kind="recipe", code=CODE)) is not None
    assert log.find(record(kind="recipe", recipe="rec1pe111111")) is None


def test_a_failed_run_or_a_line_cut_short_is_not_a_record_to_skip(tmp_path):
    log = records.RunLog(tmp_path / "runs.jsonl")
    log.append(record(error="RuntimeError: boom"))
    with open(log.path, "a") as handle:
        handle.write('{"workload": "images", "seed"')  # a stop mid-write
    assert log.find(record()) is None
    assert len(log.records()) == 1
    log.append(record(test=0.7))
    assert log.find(record())["test_accuracy"] == 0.7


def test_a_voided_run_runs_again_and_the_report_says_why_it_was_voided(tmp_path):
    log = records.RunLog(tmp_path / "runs.jsonl")
    log.append(record(kind="recipe", test=0.79, void="ran beside a test run"))
    assert log.find(record(kind="recipe")) is None
    log.append(record(kind="recipe", test=0.81))
    assert log.find(record(kind="recipe"))["test_accuracy"] == 0.81
    markdown = report(log.records())
    assert "| 0 | 0.8100 |" in markdown and "0.7900 |" not in markdown
    assert "## Voided runs" in markdown and "- images seed 0 recipe (0.7900 in 100.0 s): ran beside a test run" in markdown


def test_a_test_run_beside_a_benchmark_is_noticed():
    """The record's `beside` names a pytest run as it names another benchmark script."""
    import quality

    assert quality.work_name([b"python", b"-m", b"pytest", b"-q", b"tests"]) == "pytest"
    assert quality.work_name([b"/usr/bin/python3", b"/usr/local/bin/pytest", b"tests"]) == "pytest"
    assert quality.work_name([b"python", b"benchmarks/portfolio.py", b"--suite", b"s"]) == "portfolio.py"
    assert quality.work_name([b"python", b"-m", b"autotl", b"search", b"data"]) is None
    assert quality.work_name([b"less", b"tests/pytest.ini"]) is None


def test_the_code_digest_follows_autotl_and_plugins_only(tmp_path):
    for folder in ("autotl", "plugins", "benchmarks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    before = records.code_digest(tmp_path)
    (tmp_path / "benchmarks" / "a.py").write_text("x = 2\n")
    assert records.code_digest(tmp_path) == before
    (tmp_path / "plugins" / "a.py").write_text("x = 2\n")
    assert records.code_digest(tmp_path) != before
    assert records.code_digest(REPO) == records.code_digest(REPO)


def report(runs, expected=(), suite=(), code=CODE):
    return records.render(runs, code, RECIPE, list(expected), list(suite), 0, "python benchmarks/quality.py --report")


def test_the_report_pairs_runs_of_one_code_digest_and_says_what_is_missing():
    runs = [record(kind="recipe", test=0.80), record(test=0.85), record(seed=1, kind="recipe", test=0.81),
            record(seed=1, test=0.99, code=OTHER_CODE)]  # another code's run: never mixed in
    expected = [("images", seed, kind) for seed in (0, 1) for kind in ("recipe", "autotl")]
    markdown = report(runs, expected)
    assert "| 0 | 0.8000 | 100 | 0.8500 |" in markdown
    assert "0.9900" not in markdown
    assert "autotl - recipe: 5.00 points (per seed: +5.0)" in markdown
    assert "- images seed 1 autotl" in markdown and "- images seed 0 autotl" not in markdown
    assert f"Not shown: autotl runs of other code digests ({OTHER_CODE})" in markdown
    everything = report(runs + [record(seed=1, test=0.82)], expected)
    assert "Nothing: every expected run is recorded." in everything


def test_the_report_sets_each_ablation_against_the_default_run_of_the_same_seed():
    runs = [record(workload="suite:a", test=0.90, val=0.92), record(workload="suite:a", kind="no-refit", test=0.88,
                                                                     val=0.90),
            record(workload="suite:b", test=0.70, val=0.70), record(workload="suite:b", kind="no-refit", test=0.74,
                                                                     val=0.71),
            record(workload="suite:c", kind="no-refit", test=0.5)]  # no default run to compare with
    markdown = report(runs, suite=["a", "b", "c"])
    assert "| no-refit | 2 | 1.00 | -0.50 | suite:a, suite:b |" in markdown
    assert "| suite:a | 0 | 0.9000 (0.9200) | 0.8800 (0.9000) |" in markdown  # each pair, dataset by dataset
    assert "| suite:c | 0 | - | 0.5000 (0.8200) |" in markdown
    assert "## Tuning suite (seed 0)" in markdown and "| a | - | - | 0.9000 |" in markdown


def test_the_report_names_runs_over_their_time_limit_and_failed_ones():
    runs = [record(over_limit_pct=7.5), record(seed=1, over_limit_pct=4.0, beside=["portfolio.py"]),
            record(seed=2, error="RuntimeError: boom")]
    markdown = report(runs)
    assert "beside another benchmark or a test run on the same machine: images seed 1 autotl (portfolio.py)" in markdown
    assert "2 autotl runs; 1 ended more than 5 % over their `--time-limit`: images seed 0 autotl (+7.5 %)" in markdown
    assert "- images seed 2 autotl: RuntimeError: boom" in markdown


def test_report_rebuilds_the_page_without_running_anything(tmp_path):
    """`quality.py --report` only reads the records (here, of the checkout's own code digest)."""
    (tmp_path / "quality-runs.jsonl").write_text(
        json.dumps(record(code=records.code_digest(), recipe=records.recipe_digest(), test=0.8125)) + "\n")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--report", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "quality.md").read_text()
    assert "0.8125" in markdown and "- text seed 0 recipe" in markdown


def test_report_shows_the_runs_of_another_code_digest_when_asked(tmp_path):
    """Runs measured at an earlier code digest stay readable after the code moves on (`--code-digest`)."""
    (tmp_path / "quality-runs.jsonl").write_text(
        json.dumps(record(code=OTHER_CODE, recipe=records.recipe_digest(), test=0.8125)) + "\n")
    command = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--report", "--out", str(tmp_path)]
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    assert "0.8125" not in (tmp_path / "quality.md").read_text()
    assert subprocess.run([*command, "--code-digest", OTHER_CODE], capture_output=True, timeout=120).returncode == 0
    markdown = (tmp_path / "quality.md").read_text()
    assert "0.8125" in markdown and f"code digest `{OTHER_CODE}`" in markdown


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_revision_is_a_commit():
    revision = records.git_revision()
    assert revision == "unknown" or len(revision.removesuffix("-dirty")) == 10
