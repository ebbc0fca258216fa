"""Tests of autotl.search.portfolio and of the default depths: the first trials of a search."""

from __future__ import annotations

import json

import keras_tuner as kt
import pytest

from autotl.search.portfolio import DEPTH_FRACTION, PORTFOLIOS, first_trials, fitted, portfolio_for
from autotl.search.space import build_space, declare, depth_grid
from autotl.search.tuner import make_oracle, open_oracle


class _Declaring:
    """What `open_oracle` needs of a hypermodel: it declares the space."""

    def __init__(self, space):
        self.space = space

    def declare(self, hp):
        declare(self.space, hp)


def test_default_depths_reach_the_whole_backbone_in_a_few_cuts():
    assert depth_grid(18) == [0, 1, 2, 4, 9, 14, 18]
    assert depth_grid(7) == [0, 1, 2, 4, 5, 7]
    assert depth_grid(1) == [0, 1]
    space = build_space("image", None, None, blocks=18)
    assert space["unfreeze_depth"] == {"values": [0, 1, 2, 4, 9, 14, 18]}
    # A plugin's range, and then the user's, still win over the default.
    assert build_space("text", {"unfreeze_depth": {"min": 0, "max": 6}}, None, blocks=7)["unfreeze_depth"]["max"] == 6
    assert build_space("image", None, {"unfreeze_depth": 3}, blocks=18)["unfreeze_depth"] == {"values": [3]}


def test_an_entry_takes_the_nearest_value_the_space_holds():
    space = build_space("image", None, {"unfreeze_depth": {"values": [0, 3, 8]}, "finetune_lr": {"min": 1e-5, "max": 1e-4},
                                        "head_units": {"values": [32, 300]}, "pooling": "flatten"}, blocks=18)
    values = fitted(space, {DEPTH_FRACTION: 0.5, "finetune_lr": 3e-4, "head_units": 256, "pooling": "avg",
                            "dropout": 0.25})
    assert values["unfreeze_depth"] == 3  # half of the deepest allowed (8) is 4: 3 is nearest
    assert values["finetune_lr"] == pytest.approx(1e-4)  # clipped into the range
    assert values["head_units"] == 300
    assert values["pooling"] == "flatten"  # the space fixes it
    assert values["dropout"] in (0.2, 0.3)  # snapped to the range's step of 0.1
    assert values["head_layers"] == 0  # not named by the entry: the range's lower end, KerasTuner's default
    assert list(values) == list(space)
    assert fitted(space, {DEPTH_FRACTION: 1.0})["unfreeze_depth"] == 8
    assert fitted(space, {DEPTH_FRACTION: 0.0})["unfreeze_depth"] == 0


def test_every_entry_fits_each_default_space_and_none_repeats():
    for modality, blocks in (("image", 18), ("image", 5), ("text", 7)):
        space = build_space(modality, None, None, blocks=blocks)
        trials = first_trials(space, portfolio_for(modality))
        assert len(trials) == len(PORTFOLIOS[modality])
        assert len({tuple(sorted(t.items(), key=str)) for t in trials}) == len(trials)
        deepest = max(t["unfreeze_depth"] for t in trials)
        assert deepest == max(space["unfreeze_depth"]["values"])  # the portfolio fine-tunes the whole backbone
    # A space that fixes what tells the entries apart leaves fewer first trials, not repeats.
    fixed = build_space("image", None, {"unfreeze_depth": 0, "pooling": "avg", "head_layers": 0, "dropout": 0.2,
                                        "head_lr": 1e-3, "head_units": 64, "finetune_lr": 1e-4}, blocks=18)
    assert len(first_trials(fixed, portfolio_for("image"))) == 1


@pytest.mark.parametrize("kind", ["random", "bayesian"])
def test_the_oracle_hands_out_the_portfolio_first_then_draws_and_resumes_past_it(kind, tmp_path):
    space = build_space("image", None, None, blocks=18)
    portfolio = first_trials(space, portfolio_for("image"))

    def oracle_in(workdir, resume):
        oracle = make_oracle(kind, kt.Objective("val_accuracy", "max"), 6, 2, seed=0)
        oracle.portfolio = portfolio
        return open_oracle(oracle, _Declaring(space), workdir, resume)

    oracle = oracle_in(tmp_path, resume=False)
    handed = []
    for number in range(3):
        trial = oracle.create_trial(f"tuner{number}")
        handed.append(dict(trial.hyperparameters.values))
        if number < 2:  # the third is running when the search is killed
            oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5 + number / 10})
            trial.status = kt.engine.trial.TrialStatus.COMPLETED  # as KerasTuner's tuner sets it
            oracle.end_trial(trial)
    assert handed == portfolio
    resumed = oracle_in(tmp_path, resume=True)
    values = [dict(resumed.create_trial(f"tuner{n}").hyperparameters.values) for n in range(3, 5)]
    assert values[0] == portfolio[2]  # the interrupted trial, run again
    assert values[1] not in portfolio  # past the portfolio the oracle draws, and does not start it again


def test_without_a_portfolio_the_first_trial_is_drawn(tmp_path):
    space = build_space("image", None, None, blocks=18)
    oracle = open_oracle(make_oracle("random", kt.Objective("val_accuracy", "max"), 3, 2, seed=0),
                         _Declaring(space), tmp_path, False)
    assert dict(oracle.create_trial("tuner0").hyperparameters.values) not in first_trials(space, portfolio_for("image"))


@pytest.mark.parametrize("portfolio", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_search_starts_with_the_portfolio_fitted_to_its_backbone(tmp_path, mnist_dir, portfolio):
    """Through the CLI, on real digits and the tiny backbone (depths 0-2): the first trials are the
    portfolio's, all of the backbone fine-tuned then the probe (drawn ones with --no-portfolio)."""
    from autotl.store import COMPLETED, Store

    from conftest import TINY_PLUGIN, run_cli

    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    flag = "--portfolio" if portfolio else "--no-portfolio"
    result = run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                     "--max-trials", "2", "--epochs", "2", "--finetune-epochs", "1", "--name", "p", flag,
                     "--store", store_url, "--workdir", tmp_path / "runs", "--trials-per-worker", "0")
    assert result.returncode == 0, result.stderr
    store = Store(store_url)
    search = store.get_search("p")
    space = search.config["space"]
    assert search.config["portfolio"] is portfolio
    trials = store.list_trials(search.id)
    assert [t.status for t in trials] == [COMPLETED, COMPLETED]
    expected = first_trials(space, portfolio_for("image"))[:2]
    if portfolio:
        assert [t.hyperparameters for t in trials] == expected
        assert [t.hyperparameters["unfreeze_depth"] for t in trials] == [2, 0]
        assert {m.phase for m in store.epoch_metrics(trials[0].id)} == {"head", "finetune"}
        assert {m.phase for m in store.epoch_metrics(trials[1].id)} == {"head"}
    else:
        assert trials[0].hyperparameters != expected[0]


@pytest.mark.slow
def test_one_se_tries_the_portfolios_heads_first_and_keeps_the_checkpoint_it_chooses(tmp_path, mnist_dir):
    """`--selection one-se` prefers models that fine-tune less, so the heads on cached activations run first."""
    from pathlib import Path

    from autotl.store import Store

    from conftest import TINY_PLUGIN, run_cli

    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    result = run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                     "--max-trials", "2", "--epochs", "2", "--finetune-epochs", "1", "--name", "p", "--selection",
                     "one-se", "--store", store_url, "--workdir", tmp_path / "runs", "--trials-per-worker", "0")
    assert result.returncode == 0, result.stderr
    store = Store(store_url)
    search = store.get_search("p")
    assert search.config["selection"] == "one-se"
    trials = store.list_trials(search.id)
    assert [t.hyperparameters["unfreeze_depth"] for t in trials] == [0, 2]
    chosen = store.best_trial(search)
    assert [Path(a.path).is_file() for a in store.artifacts(search.id, "checkpoint", trial_id=chosen.id)] == [True]
    best = run_cli("best", "p", "--store", store_url)
    assert best.returncode == 0 and f"best trial {chosen.number}" in best.stdout, best.stdout + best.stderr


def test_one_se_needs_the_accuracy_objective(tmp_path, mnist_dir):
    from conftest import run_cli

    result = run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--selection", "one-se", "--objective",
                     "val_loss", "--store", tmp_path / "a.db")
    assert result.returncode == 2
    assert result.stderr.strip() == ("Error: --selection one-se needs --objective val_accuracy (its standard error "
                                      "is the accuracy's)"), result.stderr


def _portfolio_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "portfolio.py"
    spec = importlib.util.spec_from_file_location("portfolio_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs_file(path):
    """The benchmark's runs file (benchmarks/quality_records.RunLog, which the portfolio benchmark imports)."""
    return _portfolio_benchmark().quality_records.RunLog(path)


def test_the_portfolio_procedure_adds_what_covers_the_datasets_best_then_the_faster():
    benchmark = _portfolio_benchmark()
    # An all-rounder first, then a specialist: on d1 "a" is best, on d2 "b"; "c" is good on both.
    scores = {"d1": {"a": 1.0, "b": 0.5, "c": 0.875}, "d2": {"a": 0.5, "b": 1.0, "c": 0.875}}  # c scales to 0.75
    steps = benchmark.greedy_portfolio(scores, {"a": 10.0, "b": 5.0, "c": 1.0}, size=2)
    assert [s["add"] for s in steps] == ["c", "b"]  # after c, a and b both reach 0.875 on average: b is faster
    assert [s["mean_best_scaled"] for s in steps] == [0.75, 0.875]
    assert [s["add"] for s in benchmark.greedy_portfolio(scores, {"a": 1.0, "b": 5.0}, size=3)] == ["c", "a", "b"]
    # Every candidate in the script fits its modality's default space, and differs from the others there
    # (or in its fine-tuning epochs, which the search takes as an option).
    for modality, candidates in benchmark.CANDIDATES.items():
        space = build_space(modality, None, None, blocks=7)
        distinct = {(json.dumps(fitted(space, entry), sort_keys=True, default=str), entry.get(benchmark.FINETUNE_EPOCHS))
                    for entry in candidates.values()}
        assert len(distinct) == len(candidates)


# --------------------------------------------------------------------------- benchmarks/portfolio.py in pieces

FAKE_CANDIDATES = {"image": {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3}}, "text": {"p": {"x": 1}}}
FAKE_SUITE = [{"name": "d1", "modality": "image", "paths": {}}, {"name": "d2", "modality": "image", "paths": {}},
              {"name": "t1", "modality": "text", "paths": {}}]


class _Stopped(Exception):
    """Stands for a run stopped half-way (Ctrl-C, a lost machine)."""


def _fake_values(entry, modality):
    return {"unfreeze_depth": entry["x"] * 2, "modality": modality}


def _runs(tmp_path, benchmark, runner, modalities=("image", "text"), names=None, values_of=_fake_values):
    log = tmp_path / "out" / benchmark.RUNS_FILE
    return benchmark.run_missing(tmp_path / "suite", FAKE_SUITE, list(modalities), names, log, "rev1",
                                 extra={"machine": {"cpu": "test"}}, runner=runner, values_of=values_of,
                                 after_each=lambda: benchmark.write_report(tmp_path / "out", benchmark.build_document(
                                     _runs_file(log).records(), FAKE_SUITE, list(modalities), "rev1", 2, "test",
                                     log)))


def test_a_stopped_portfolio_run_restarts_where_it_stopped_and_retries_failures(tmp_path, monkeypatch):
    benchmark = _portfolio_benchmark()
    monkeypatch.setattr(benchmark, "CANDIDATES", FAKE_CANDIDATES)
    log = tmp_path / "out" / benchmark.RUNS_FILE
    # A success of c on d1, but from other code: it must run again.
    _runs_file(log).append({"candidate": "c", "dataset": "d1", "values": _fake_values({"x": 3}, "image"),
                                  "revision": "rev0", "dataset_digest": benchmark.dataset_digest(FAKE_SUITE[0]),
                                  "val_accuracy": 0.9, "seconds": 1.0})
    calls = []

    def runner(name, values, dataset, suite_dir, work):
        if stop_after is not None and len(calls) == stop_after:
            raise _Stopped
        calls.append((name, dataset["name"]))
        if (name, dataset["name"]) == ("a", "d2") and stop_after is not None:  # fails in the first session only
            return {"error": ["out of memory"], "seconds": 1.0, "command": "fake"}
        return {"val_accuracy": 0.5 + len(calls) / 100, "seconds": 1.0, "command": "fake"}

    stop_after = 3
    with pytest.raises(_Stopped):
        _runs(tmp_path, benchmark, runner)
    assert calls == [("a", "d1"), ("a", "d2"), ("b", "d1")]
    assert len(_runs_file(log).records()) == 4  # each finished run landed at once
    partial = (tmp_path / "out" / "portfolio.md").read_text()
    assert "Still missing: (a, d2), (b, d2), (c, d1), (c, d2)." in partial and "| a | 0.5100 | error | 0 |" in partial

    calls.clear()
    stop_after = None
    assert _runs(tmp_path, benchmark, runner) == 5
    assert calls == [("a", "d2"), ("b", "d2"), ("c", "d1"), ("c", "d2"), ("p", "t1")]
    record = _runs_file(log).records()[-1]
    assert record["revision"] == "rev1" and record["machine"] == {"cpu": "test"} and record["command"] == "fake"
    assert record["values"] == {"unfreeze_depth": 2, "modality": "text"}
    assert "Every run is there." in (tmp_path / "out" / "portfolio.md").read_text()

    calls.clear()
    assert _runs(tmp_path, benchmark, runner) == 0 and calls == []
    # Other fitted values (the space changed) are another run.
    assert _runs(tmp_path, benchmark, runner, values_of=lambda e, m: {**_fake_values(e, m), "x": e["x"]}) == 7


def test_runs_follow_the_order_of_modalities_and_candidates_given(tmp_path, monkeypatch):
    benchmark = _portfolio_benchmark()
    monkeypatch.setattr(benchmark, "CANDIDATES", FAKE_CANDIDATES)
    calls = []

    def runner(name, values, dataset, suite_dir, work):
        calls.append((name, dataset["name"]))
        return {"val_accuracy": 0.5, "seconds": 1.0, "command": "fake"}

    _runs(tmp_path, benchmark, runner, modalities=("text", "image"), names=["c", "p", "a"])
    assert calls == [("p", "t1"), ("c", "d1"), ("c", "d2"), ("a", "d1"), ("a", "d2")]


def _record(benchmark, candidate, dataset, accuracy, revision="rev1", digest=None, entry=None, seconds=1.0):
    modality = "text" if dataset.startswith("t") else "image"
    entry = FAKE_CANDIDATES[modality][candidate] if entry is None else entry
    suite_entry = next(d for d in FAKE_SUITE if d["name"] == dataset)
    record = {"candidate": candidate, "modality": modality, "dataset": dataset, "entry": entry,
              "values": _fake_values(entry, modality), "revision": revision,
              "dataset_digest": digest or benchmark.dataset_digest(suite_entry), "seconds": seconds, "command": "c"}
    record.update({"val_accuracy": accuracy} if accuracy is not None else {"error": ["failed"]})
    return record


def test_the_report_counts_only_the_current_revision_and_selects_over_complete_datasets(tmp_path, monkeypatch):
    benchmark = _portfolio_benchmark()
    monkeypatch.setattr(benchmark, "CANDIDATES", FAKE_CANDIDATES)
    records = [_record(benchmark, "a", "d1", 0.9, seconds=10), _record(benchmark, "b", "d1", 0.5, seconds=5),
               _record(benchmark, "c", "d1", 0.8, seconds=1),
               _record(benchmark, "a", "d2", 0.6), _record(benchmark, "b", "d2", None),
               _record(benchmark, "c", "d2", 0.7),
               # Not counted: other code, a suite written again, a candidate since changed.
               _record(benchmark, "b", "d2", 0.99, revision="rev0"), _record(benchmark, "a", "d1", 0.1, digest="stale"),
               _record(benchmark, "c", "d1", 0.0, entry={"x": 99})]
    document = benchmark.build_document(records, FAKE_SUITE, ["image", "text"], "rev1", 2, "cmd", tmp_path / "r")
    image, text = document["modalities"]["image"], document["modalities"]["text"]
    assert list(document["modalities"]) == ["image", "text"]
    assert image["scores"] == {"d1": {"a": 0.9, "b": 0.5, "c": 0.8}, "d2": {"a": 0.6, "c": 0.7}}
    assert image["missing"] == [["b", "d2"]] and image["failed"] == [["b", "d2"]]
    assert image["complete_datasets"] == ["d1"]
    # Over d1 alone: a is best; then b and c add nothing, c is the faster.
    assert [(s["add"], s["mean_best_scaled"]) for s in image["steps"]] == [("a", 1.0), ("c", 1.0)]
    assert text["missing"] == [["p", "t1"]] and text["steps"] == []
    markdown = benchmark.render(document)
    assert "| b | 0.5000 | error | 5 |" in markdown
    assert "Still missing: (b, d2)." in markdown
    assert ("Greedy selection over d1 (the datasets with a result of every candidate; the entries, not their "
            "fine-tuning epochs): a (1.0), then c (1.0)") in markdown
    assert "Greedy selection: none yet" in markdown


def test_report_rebuilds_from_the_records_without_running(tmp_path, monkeypatch):
    benchmark = _portfolio_benchmark()
    monkeypatch.setattr(benchmark, "CANDIDATES", FAKE_CANDIDATES)
    monkeypatch.setattr(benchmark, "run_missing", lambda *a, **k: pytest.fail("--report ran something"))
    suite_dir, out = tmp_path / "suite", tmp_path / "out"
    suite_dir.mkdir()
    (suite_dir / "suite.json").write_text(json.dumps({"datasets": FAKE_SUITE}))
    code = benchmark.code_revision()
    for candidate, accuracy in (("a", 0.9), ("b", 0.5), ("c", 0.8)):
        _runs_file(out / benchmark.RUNS_FILE).append(_record(benchmark, candidate, "d1", accuracy, revision=code))
    _runs_file(out / benchmark.RUNS_FILE).append(_record(benchmark, "p", "t1", 0.7, revision="0ld"))
    assert benchmark.main([str(suite_dir), "--report", "--out", str(out), "--modalities", "text", "image"]) == 0
    document = json.loads((out / "portfolio.json").read_text())
    assert list(document["modalities"]) == ["text", "image"]
    assert document["modalities"]["image"]["scores"]["d1"] == {"a": 0.9, "b": 0.5, "c": 0.8}
    assert document["modalities"]["text"]["scores"] == {"t1": {}}
    assert "Greedy selection over d1" in (out / "portfolio.md").read_text()


def test_the_revision_is_a_digest_of_the_python_code_only(tmp_path):
    benchmark = _portfolio_benchmark()
    for relative in ("autotl/search/a.py", "plugins/b.py", "autotl/notes.md"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x = 1\n")
    first = benchmark.code_revision(tmp_path)
    assert len(first) == 12 and int(first, 16) >= 0
    (tmp_path / "autotl/notes.md").write_text("changed\n")
    assert benchmark.code_revision(tmp_path) == first
    (tmp_path / "plugins/b.py").write_text("x = 2\n")
    assert benchmark.code_revision(tmp_path) != first
    assert len(benchmark.code_revision()) == 12  # the repository's own


def test_a_record_cut_short_by_a_stop_is_left_out_and_the_next_one_lands_whole(tmp_path):
    benchmark = _portfolio_benchmark()
    log = tmp_path / benchmark.RUNS_FILE
    log.write_text('{"candidate": "a"}\n{"candidate": "b", "da')
    _runs_file(log).append({"candidate": "c"})
    assert _runs_file(log).records() == [{"candidate": "a"}, {"candidate": "c"}]


# The modalities whose shipped entries are not yet the procedure's output, and why. A modality leaves this
# set once results/portfolio.json holds its complete run; the test below then requires its entries to match.
NOT_YET_CHOSEN_ON_THE_SUITE: dict[str, str] = {}


def test_the_shipped_portfolio_is_the_procedures_output_on_the_tuning_suite():
    from pathlib import Path

    benchmark = _portfolio_benchmark()
    document = json.loads((Path(__file__).resolve().parents[1] / "results" / "portfolio.json").read_text())
    for modality in PORTFOLIOS:
        part = document["modalities"].get(modality, {})
        if modality in NOT_YET_CHOSEN_ON_THE_SUITE:
            assert part.get("missing") or not part, f"{modality}: complete now, ship its selection"
            continue
        assert part and not part["missing"] and not part["failed"], f"{modality}: the procedure's run is incomplete"
        chosen = [benchmark.CANDIDATES[modality][step["add"]] for step in part["steps"]]
        assert PORTFOLIOS[modality] == chosen


def test_berts_fine_tuning_epochs_are_the_procedures_choice_on_the_tuning_suite():
    from pathlib import Path

    from autotl_plugins.bert import Bert

    benchmark = _portfolio_benchmark()
    document = json.loads((Path(__file__).resolve().parents[1] / "results" / "portfolio.json").read_text())
    best = benchmark.chosen_epochs(document["modalities"]["text"]["epochs"])
    assert best is not None and isinstance(best["finetune_epochs"], int), \
        "the backbone's own epochs won: the default stands, say so here"
    assert Bert.default_finetune_epochs == best["finetune_epochs"]


def test_fine_tuning_epochs_are_compared_apart_and_never_a_portfolio_entry(monkeypatch):
    benchmark = _portfolio_benchmark()
    text = benchmark.CANDIDATES["text"]
    scores = {d: {c: 0.5 for c in text} for d in ("a", "b")}
    scores["a"].update({"all-1e-4": 0.80, "all-1e-4-2ep": 0.70, "all-1e-4-8ep": 0.90})
    scores["b"].update({"all-1e-4": 0.60, "all-1e-4-2ep": 0.70, "all-1e-4-8ep": 0.95})
    rows = {row["candidate"]: row for row in benchmark.epoch_choice("text", scores)}
    assert set(rows) == {"all-1e-4", "all-1e-4-2ep", "all-1e-4-8ep"}
    assert rows["all-1e-4-8ep"]["finetune_epochs"] == 8 and rows["all-1e-4"]["finetune_epochs"] == "the backbone's"
    assert rows["all-1e-4"]["mean_val_accuracy"] == 0.7 and rows["all-1e-4-8ep"]["mean_scaled"] == 1.0
    # An 8-epoch run best everywhere is still not a portfolio entry: the selection picks among the space's.
    candidates = {"a": {"x": 1}, "a-8ep": {"x": 1, benchmark.FINETUNE_EPOCHS: 8}, "b": {"x": 2}}
    monkeypatch.setattr(benchmark, "CANDIDATES", {"image": candidates, "text": {}})
    records = [_record(benchmark, c, d, v, entry=candidates[c]) for d in ("d1", "d2")
               for c, v in (("a", 0.7), ("a-8ep", 0.9), ("b", 0.8))]
    part = benchmark.modality_part(records, FAKE_SUITE, "image", "rev1", 2)
    assert [step["add"] for step in part["steps"]] == ["b", "a"]
    assert [(row["candidate"], row["mean_val_accuracy"]) for row in part["epochs"]] == [("a", 0.7), ("a-8ep", 0.9)]


@pytest.mark.parametrize("fill_time", [True, False])
def test_with_fill_time_the_time_a_long_fine_tune_leaves_goes_to_the_proposals_that_fit(tmp_path, fill_time):
    """The suite's digits-fewshot: the whole-backbone fine-tune took 67 s and left 52 s, and the search
    stopped, since the median trial (67 s) would not fit, although the portfolio's next entry, a head on
    the cached activations, takes seconds."""
    from autotl.search.budget import Deadline, TrialCost

    space = build_space("image", None, None, blocks=18)
    portfolio = first_trials(space, portfolio_for("image"))
    assert [entry["unfreeze_depth"] for entry in portfolio] == [18, 0, 4]
    oracle = make_oracle("random", kt.Objective("val_accuracy", "max"), None, 2, seed=0)
    oracle.portfolio, oracle.fill_time = portfolio, fill_time
    oracle = open_oracle(oracle, _Declaring(space), tmp_path, False)
    completed: list[TrialCost] = []
    oracle.completed_costs = lambda: completed

    def next_trial(seconds_left: float):
        oracle.deadline = Deadline.after(seconds_left)
        trial = oracle.create_trial(f"tuner{len(oracle.trials)}")
        return dict(trial.hyperparameters.values) if trial.status == "RUNNING" else None

    assert next_trial(120) == portfolio[0]  # the first trial always starts
    completed.append(TrialCost(18, 67.0))
    handed = next_trial(52)
    if not fill_time:
        assert handed is None and oracle.stopped_by_deadline  # rule 2: the median trial, 67 s, would not fit
        return
    assert handed == portfolio[1]  # the head: seconds
    completed.append(TrialCost(0, 3.0))
    # 67 s / 18 blocks: a quarter of the backbone (4 blocks) would take about 15 s. With 10 s left it is passed
    # over for a draw that fits (a head, or 1-2 blocks); with 2 s left nothing fits, and the search stops.
    handed = next_trial(10)
    assert handed != portfolio[2] and handed["unfreeze_depth"] * 67 / 18 <= 10
    completed.append(TrialCost(handed["unfreeze_depth"], 3.0))
    assert not oracle.stopped_by_deadline
    assert next_trial(2) is None and oracle.stopped_by_deadline


def test_a_trial_is_expected_to_take_what_trials_like_it_took():
    from autotl.search.budget import TrialCost, expected_seconds

    assert expected_seconds(0, []) == 0.0
    assert expected_seconds(9, []) == 0.0
    costs = [TrialCost(18, 72.0), TrialCost(0, 3.0), TrialCost(0, 5.0), TrialCost(4, 20.0)]
    assert expected_seconds(0, costs) == 4.0  # the heads' median
    assert expected_seconds(9, costs) == pytest.approx(9 * (4.0 + 5.0) / 2)  # the median per block: (4 + 5) / 2
    assert expected_seconds(9, [TrialCost(0, 3.0), TrialCost(0, 7.0)]) == 5.0  # no fine-tune yet: rule 2's median
