"""The quality benchmark's records: one JSON line per finished run, and the report rebuilt from them.

A long benchmark must land in pieces: each run is appended to ``results/quality-runs.jsonl`` the moment it
ends, so a stopped session loses at most the run in progress, and a restart skips what is recorded. A
record says which code produced it:

* ``code_digest``: sha256 of every ``.py`` file under ``autotl/`` and ``plugins/`` (path and content). An
  autotl run, or an ablation, is valid only for the code with that digest; the report never mixes two.
* ``recipe_digest``: the same of ``benchmarks/recipe.py``. The recipe's runs stay valid while it is
  unchanged, whatever happens to autotl.
* ``revision``: the git commit it ran on (``-dirty`` when autotl/, plugins/ or benchmarks/ differed from
  it), for the reader; the digests decide.

A run is recorded again only when its key differs: the workload (or suite dataset), the seed, the kind
(``recipe``, ``autotl`` or an ablation's name), the digest that applies to its kind, and its settings
(split sizes, the time-limit rule, extra ``autotl search`` arguments, ``--quick``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("autotl", "plugins")
RECIPE_FILES = ("benchmarks/recipe.py",)
RECIPE = "recipe"
AUTOTL = "autotl"


# --------------------------------------------------------------------------- what code ran


def files_digest(paths: Iterable[Path], root: Path = REPO) -> str:
    """sha256 (12 hex digits) over the relative path and bytes of each file, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def json_digest(value: Any) -> str:
    """sha256 (12 hex digits) of `value` as sorted JSON: a suite dataset's identity is its suite.json entry."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def code_digest(root: Path = REPO) -> str:
    """The digest of the code that decides an autotl run's result: autotl/ and plugins/."""
    return files_digest([p for folder in CODE_FOLDERS for p in (root / folder).rglob("*.py")], root)


def recipe_digest(root: Path = REPO) -> str:
    return files_digest([root / name for name in RECIPE_FILES], root)


def git_revision(root: Path = REPO) -> str:
    """The short commit, with ``-dirty`` when the code or the benchmarks differ from it; ``unknown`` without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=10", "HEAD")
        dirty = git("status", "--porcelain", "--", *CODE_FOLDERS, "benchmarks")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


# --------------------------------------------------------------------------- the log of runs


def runs_file_name(quick: bool) -> str:
    """A quick smoke run never writes into the real records."""
    return "quality-quick-runs.jsonl" if quick else "quality-runs.jsonl"


def digest_of(record: dict[str, Any]) -> str:
    """The digest a record is valid for: the recipe's for a recipe run, the code's for any other."""
    return record["recipe_digest"] if record["kind"] == RECIPE else record["code_digest"]


def counts(record: dict[str, Any]) -> bool:
    """Whether a record is a measurement: not a failed run (``error``), nor one voided by hand.

    A record found unfit after the fact (it ran beside other work, say) is not deleted: a person adds
    ``"void": "<why>"`` to its line. It then runs again on a restart, and the report lists it with its reason.
    """
    return "error" not in record and "void" not in record


def run_key(record: dict[str, Any]) -> tuple:
    return (record["workload"], record["seed"], record["kind"], digest_of(record),
            json.dumps(record.get("settings", {}), sort_keys=True))


class RunLog:
    """The append-only JSON-lines file of finished runs."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record; a line cut short by a stop mid-write is ignored."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def find(self, key_fields: dict[str, Any]) -> dict[str, Any] | None:
        """The latest record with this run's key, failed and voided runs excluded (they run again)."""
        wanted = run_key(key_fields)
        matches = [r for r in self.records() if counts(r) and run_key(r) == wanted]
        return matches[-1] if matches else None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_short = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(("\n" if cut_short else "") + json.dumps(record, default=str, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the next run starts: a stop loses no finished run
        return record


# --------------------------------------------------------------------------- the report


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f} (n={len(values)})"


class Selection:
    """The records one report may combine: the recipe's of one recipe digest, the rest of one code digest."""

    def __init__(self, records: list[dict[str, Any]], code: str, recipe: str):
        self.code, self.recipe = code, recipe
        valid = [r for r in records if counts(r)]
        self.runs = [r for r in valid if digest_of(r) == (recipe if r["kind"] == RECIPE else code)]
        self.failed = [r for r in records if "error" in r and digest_of(r) == (recipe if r["kind"] == RECIPE else code)]
        self.voided = [r for r in records if "void" in r and digest_of(r) == (recipe if r["kind"] == RECIPE else code)]
        self.other_code = sorted({r["code_digest"] for r in valid if r["kind"] != RECIPE and r["code_digest"] != code})

    def pick(self, workload: str, seed: int, kind: str) -> dict[str, Any]:
        """The latest run of (workload, seed, kind), or {}."""
        matches = [r for r in self.runs if (r["workload"], r["seed"], r["kind"]) == (workload, seed, kind)]
        return matches[-1] if matches else {}

    def seeds(self, workload: str) -> list[int]:
        return sorted({r["seed"] for r in self.runs if r["workload"] == workload})

    def kinds(self) -> list[str]:
        """The ablations present, in the order first recorded."""
        return list(dict.fromkeys(r["kind"] for r in self.runs if r["kind"] not in (RECIPE, AUTOTL)))


TABLE_HEAD = ("| {first} | recipe test | recipe s | autotl test | autotl best val | val - test | autotl s "
              "| time limit s | over limit % | configurations | autotl - recipe (points) |")


def separator(head: str) -> str:
    return "|" + "---|" * (head.count("|") - 1)


def pair_row(first: str, rec: dict, auto: dict) -> str:
    difference = (100 * (auto["test_accuracy"] - rec["test_accuracy"])
                  if "test_accuracy" in auto and "test_accuracy" in rec else None)
    return (f"| {first} | {fmt(rec.get('test_accuracy'))} | {fmt(rec.get('seconds'), 0)} "
            f"| {fmt(auto.get('test_accuracy'))} | {fmt(auto.get('val_accuracy'))} | {fmt(auto.get('val_test_gap'))} "
            f"| {fmt(auto.get('seconds'), 0)} | {fmt(auto.get('time_limit_s'))} | {fmt(auto.get('over_limit_pct'), 1)} "
            f"| {fmt(auto.get('configurations'))} | {fmt(difference, 1)} |")


def workload_section(selection: Selection, workload: str) -> list[str]:
    seeds = selection.seeds(workload)
    pairs = [(seed, selection.pick(workload, seed, RECIPE), selection.pick(workload, seed, AUTOTL)) for seed in seeds]
    head = TABLE_HEAD.format(first="seed")
    lines = [f"### {workload}", "", head, separator(head)]
    lines += [pair_row(str(seed), rec, auto) for seed, rec, auto in pairs]
    both = [(rec, auto) for _, rec, auto in pairs if rec and auto]
    recipe_acc = [rec["test_accuracy"] for rec, _ in both]
    autotl_acc = [auto["test_accuracy"] for _, auto in both]
    differences = [100 * (a - r) for r, a in zip(recipe_acc, autotl_acc)]
    lines += ["", f"Seeds with both runs: recipe {mean_sd(recipe_acc)}, autotl {mean_sd(autotl_acc)}; "
              f"autotl - recipe: {fmt(float(np.mean(differences)) if differences else None, 2)} points "
              f"(per seed: {', '.join(f'{d:+.1f}' for d in differences) or '-'}).", ""]
    return lines


def suite_section(selection: Selection, datasets: list[str], seed: int) -> list[str]:
    if not datasets:
        return []
    head = TABLE_HEAD.format(first="dataset")
    lines = [f"## Tuning suite (seed {seed})", "", head, separator(head)]
    for dataset in datasets:
        workload = f"suite:{dataset}"
        lines.append(pair_row(dataset, selection.pick(workload, seed, RECIPE), selection.pick(workload, seed, AUTOTL)))
    return lines + [""]


def ablation_section(selection: Selection) -> list[str]:
    """Each ablation against the default autotl run of the same workload and seed, in test and validation."""
    kinds = selection.kinds()
    if not kinds:
        return []
    lines = ["## Ablations", "", "Each row: the ablation's run minus autotl's default run of the same workload "
             "and seed, in points; mean over the pairs recorded.", "",
             "| ablation | pairs | test difference | validation difference | workloads |", "|---|---|---|---|---|"]
    for kind in kinds:
        pairs = [(r, selection.pick(r["workload"], r["seed"], AUTOTL)) for r in selection.runs if r["kind"] == kind]
        pairs = [(r, base) for r, base in pairs if base]
        test = [100 * (r["test_accuracy"] - base["test_accuracy"]) for r, base in pairs]
        val = [100 * (r["val_accuracy"] - base["val_accuracy"]) for r, base in pairs
               if r.get("val_accuracy") is not None and base.get("val_accuracy") is not None]
        workloads = ", ".join(sorted({r["workload"] for r, _ in pairs})) or "-"
        lines.append(f"| {kind} | {len(pairs)} | {fmt(float(np.mean(test)) if test else None, 2)} "
                     f"| {fmt(float(np.mean(val)) if val else None, 2)} | {workloads} |")
    return lines + [""] + ablation_pairs(selection, kinds)


def ablation_pairs(selection: Selection, kinds: list[str]) -> list[str]:
    """Each pair: the ablation's test (and validation) accuracy against the default's, workload by workload."""
    lines = ["Each pair, test accuracy (validation in brackets): the default, then each ablation.", "",
             "| workload | seed | autotl | " + " | ".join(kinds) + " |", "|---|---|---|" + "---|" * len(kinds)]
    keys = sorted({(r["workload"], r["seed"]) for r in selection.runs if r["kind"] in kinds})
    for workload, seed in keys:
        base = selection.pick(workload, seed, AUTOTL)
        cells = [_accuracies(selection.pick(workload, seed, kind)) for kind in kinds]
        lines.append(f"| {workload} | {seed} | {_accuracies(base)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _accuracies(record: dict[str, Any] | None) -> str:
    if not record:
        return "-"
    return f"{fmt(record['test_accuracy'])} ({fmt(record.get('val_accuracy'))})"


def missing_runs(selection: Selection, expected: list[tuple[str, int, str]]) -> list[str]:
    return [f"{workload} seed {seed} {kind}" for workload, seed, kind in expected
            if not selection.pick(workload, seed, kind)]


def render(records: list[dict[str, Any]], code: str, recipe: str, expected: list[tuple[str, int, str]],
           suite_datasets: list[str], suite_seed: int, command: str, quick: bool = False) -> str:
    """results/quality.md, from the records of one code digest (and the recipe's of one recipe digest)."""
    selection = Selection(records, code, recipe)
    machines = {json.dumps(r.get("machine", {}).get("cpu")) for r in selection.runs}
    lines = ["# Model quality: autotl's default search vs the hand-written recipe", ""]
    if quick:
        lines += ["**Quick smoke run (`--quick`): tiny splits and epochs; these figures measure nothing.**", ""]
    lines += [f"Rebuilt by `{command}` from the records of `{runs_file_name(quick)}`: autotl's runs of code "
              f"digest `{code}` (autotl/ and plugins/), the recipe's of recipe digest `{recipe}`. Each record holds "
              "its command, revision, machine and figures. Test accuracy on the fixed test split; recipe seconds: "
              "model build + training + test evaluation; autotl seconds: `autotl search`'s wall time as a "
              "subprocess; over limit %: those seconds against `--time-limit`; configurations: trials completed; "
              "val - test: the best trial's validation accuracy minus the export's test accuracy.", "",
              f"CPUs of these runs: {', '.join(sorted(machines)) or '-'}.", ""]
    workloads = list(dict.fromkeys(r["workload"] for r in selection.runs if not r["workload"].startswith("suite:")))
    if workloads:
        lines += ["## Workloads", ""]
    for workload in workloads:
        lines += workload_section(selection, workload)
    lines += suite_section(selection, suite_datasets, suite_seed)
    lines += ablation_section(selection)
    over = [r for r in selection.runs if r["kind"] != RECIPE and (r.get("over_limit_pct") or 0) > 5]
    lines += ["## Time limits", "",
              f"{sum(r['kind'] != RECIPE for r in selection.runs)} autotl runs; "
              f"{len(over)} ended more than 5 % over their `--time-limit`"
              + (": " + ", ".join(f"{r['workload']} seed {r['seed']} {r['kind']} ({r['over_limit_pct']:+.1f} %)"
                                  for r in over) if over else "") + ".", ""]
    busy = [r for r in selection.runs if r.get("beside")]
    if busy:
        lines += ["Runs made beside another benchmark or a test run on the same machine: "
                  + ", ".join(f"{r['workload']} seed {r['seed']} {r['kind']} ({', '.join(r['beside'])})" for r in busy)
                  + ". Their seconds, and what fitted in a time limit, are not comparable with an idle machine's.",
                  ""]
    missing = missing_runs(selection, expected)
    lines += ["## Still to run", "", ("- " + "\n- ".join(missing)) if missing else "Nothing: every expected run is "
              "recorded.", ""]
    if selection.failed:
        lines += ["## Failed runs (they run again on a restart)", ""]
        lines += [f"- {r['workload']} seed {r['seed']} {r['kind']}: {r['error']}" for r in selection.failed] + [""]
    if selection.voided:
        lines += ["## Voided runs (not shown above; they run again on a restart)", ""]
        lines += [f"- {r['workload']} seed {r['seed']} {r['kind']} ({fmt(r.get('test_accuracy'))} in {r['seconds']} s): "
                  f"{r['void']}" for r in selection.voided] + [""]
    if selection.other_code:
        lines += [f"Not shown: autotl runs of other code digests ({', '.join(selection.other_code)}).", ""]
    return "\n".join(lines)
