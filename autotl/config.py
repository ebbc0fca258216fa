"""A search's configuration: its options and their checks, how the store keeps it, and when a
stored search may be resumed with a given one.

`SearchConfig` holds the options (the CLI's map one to one onto its fields); the choice lists
here are the ones the CLI offers. `Prepared` is what a search has once those options are
loaded (backbone, preprocessor, space, data). `config_record` is the configuration as the
store keeps it and `config_from_record` reads it back; `check_same_options` and
`check_resumable` refuse to continue a stored search under different options. `load_split`
re-creates a search's training and validation data from its configuration, and
`split_fingerprint` identifies them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotl.errors import UsageError
from autotl.search.distributed import parse_address
from autotl.store.queries import BEST, ONE_SE, SELECTIONS

if TYPE_CHECKING:  # the data and backbones are imported where used, so that `autotl --help` stays fast
    from autotl.backbones.protocol import Backbone, Preprocessor
    from autotl.data import Dataset
    from autotl.store import Search

TUNERS = ("random", "bayesian", "hyperband")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CACHE_DTYPES = ("auto", "float32", "float16")
OBJECTIVES = ("val_accuracy", "val_loss")
DEFAULT_CACHE_MAX_GB = 10.0  # the activation cache's bound unless a search says otherwise (autotl.cache.entries)
DEFAULT_MAX_TRIALS = 5  # without a --time-limit; with one, --max-trials is an optional cap
# What must match for `autotl search --name NAME` to resume an unfinished search of that name
# (the data are compared by fingerprint); the rest (cache, precision, workers) may change.
RESUME_OPTIONS = ("data", "backbone", "tuner", "portfolio", "selection", "max_trials", "epochs", "finetune_epochs", "batch_size", "patience",
                  "seed", "objective", "val_split", "val_data", "image_size", "sequence_length", "text_col",
                  "label_col", "space_file")
RESUME_FIELDS = ("weights", "space", "preprocessing")  # compared once the data and backbone are loaded
PATH_OPTIONS = ("data", "val_data", "space_file", "cache_dir", "tensorboard_dir")  # stored absolute
# Options added after searches were stored, with the value a stored search without them ran with.
ADDED_OPTIONS = {"selection": BEST}


@dataclass
class SearchConfig:
    """Everything a search needs; the CLI's options map one to one onto these fields."""

    data: str
    backbone: str
    weights: str | None = None
    name: str | None = None
    tuner: str = "random"
    portfolio: bool = True  # the first trials are autotl.search.portfolio's (random and bayesian tuners)
    selection: str = BEST  # how the trial is chosen: the best, or the simplest within one standard error (autotl.store.queries)
    refit: bool = False  # train the best configuration again on training + validation data (autotl.search.refit)
    ensemble_size: int = 1  # > 1: average up to this many of the best trials when it helps (autotl.search.ensemble)
    checkpoint_soup: bool = False  # average a fine-tune's best epochs greedily (autotl.search.soup)
    convex_head: bool = False  # a first trial: logistic regression on the pooled frozen features (autotl.search.convex)
    fill_time: bool = True  # under a time limit, pass over the proposals that would not fit (autotl.search.budget)
    max_trials: int | None = None  # None: DEFAULT_MAX_TRIALS, or no cap when time_limit is set
    time_limit: float | None = None  # seconds for this run of the search (autotl.search.budget)
    epochs: int = 10
    finetune_epochs: int | None = None
    batch_size: int = 32
    patience: int = 3
    seed: int = 0
    objective: str = "val_accuracy"
    val_split: float = 0.2
    val_data: str | None = None
    image_size: int | None = None
    sequence_length: int | None = None
    text_col: str = "text"
    label_col: str = "label"
    space_file: str | None = None
    workdir: str = "autotl_runs"
    trials_per_worker: int = 25
    worker_memory_growth_mb: int = 1024
    precision: str = "float32"
    cache: bool = True
    cache_dir: str | None = None
    cache_dtype: str = "auto"
    cache_memory_mb: int | None = None  # None: a quarter of this machine's memory
    cache_max_gb: float = DEFAULT_CACHE_MAX_GB  # the activation cache's bound (autotl.cache.entries)
    strict: bool = False
    max_failures: int = 5
    workers: int = 0  # > 0: a chief oracle here and this many tuner worker processes (KerasTuner's distributed mode)
    oracle_address: str = "127.0.0.1:0"  # where the chief listens; port 0 picks a free one
    plugin_files: list[str] = field(default_factory=list)
    tensorboard_dir: str | None = None  # log each trial for TensorBoard under DIR/<search name>/trial_NNN

    def validate(self) -> None:
        """Check the options (one-line UsageErrors), and settle the trial cap: `max_trials`
        None becomes DEFAULT_MAX_TRIALS unless a time limit bounds the search instead."""
        if self.max_trials is None and self.time_limit is None:
            self.max_trials = DEFAULT_MAX_TRIALS
        if self.time_limit is not None and not self.time_limit > 0:
            raise UsageError("--time-limit must be more than 0 seconds")
        if self.tuner not in TUNERS:
            raise UsageError(f"unknown tuner {self.tuner!r} (use one of {', '.join(TUNERS)})")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r} (use one of {', '.join(PRECISIONS)})")
        if self.cache_dtype not in CACHE_DTYPES:
            raise UsageError(f"unknown cache dtype {self.cache_dtype!r} (use one of {', '.join(CACHE_DTYPES)})")
        for option, value in (("max-trials", self.max_trials), ("epochs", self.epochs),
                              ("batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise UsageError(f"--{option} must be at least 1")
        if not self.cache_max_gb > 0:
            raise UsageError(f"--cache-max-gb must be more than 0, not {self.cache_max_gb}")
        if self.cache_memory_mb is not None and self.cache_memory_mb < 0:
            raise UsageError("--cache-memory cannot be negative")
        if self.ensemble_size < 1:
            raise UsageError("--ensemble-size must be at least 1 (1: no ensemble)")
        if self.max_failures < 1:
            raise UsageError("--max-failures must be at least 1")
        if self.workers < 0:
            raise UsageError("--workers cannot be negative")
        if self.convex_head and self.workers > 0:
            raise UsageError("--convex-head runs in the search's own process; it does not combine with --workers")
        parse_address(self.oracle_address, allow_port_zero=True)
        if self.worker_memory_growth_mb < 1:
            raise UsageError("--worker-memory-growth must be at least 1 (MB)")
        if self.trials_per_worker < 0:
            raise UsageError("--trials-per-worker cannot be negative (0 runs trials in the search process)")
        if self.finetune_epochs is not None and self.finetune_epochs < 0:
            raise UsageError("--finetune-epochs cannot be negative")
        if self.seed < 0:
            raise UsageError("--seed cannot be negative")
        if not 0 < self.val_split < 1:
            raise UsageError("--val-split must be between 0 and 1")
        if not (self.objective.startswith("val_")):
            raise UsageError(f"--objective must be a validation metric such as val_accuracy or val_loss, "
                             f"not {self.objective!r}")
        if self.objective not in OBJECTIVES:
            raise UsageError("--objective must be val_accuracy or val_loss")
        if self.selection not in SELECTIONS:
            raise UsageError(f"unknown selection {self.selection!r} (use one of {', '.join(SELECTIONS)})")
        if self.selection == ONE_SE and self.objective != "val_accuracy":
            raise UsageError("--selection one-se needs --objective val_accuracy (its standard error is the accuracy's)")
        if self.tensorboard_dir is not None:
            from autotl.insight.board import require_tensorboard

            require_tensorboard()

    def check_inputs(self) -> None:
        """Refuse, in one line and before Keras' seconds-long import, what can be refused without it:
        the options, data and validation paths that do not exist, plugin and space files, an uninstalled backbone."""
        from autotl.backbones.registry import check_installed
        from autotl.search.space import load_space_file

        self.validate()
        for role, path in (("dataset", self.data), ("validation data", self.val_data)):
            if path is not None and not Path(path).expanduser().exists():
                raise UsageError(f"{role} path {path} does not exist")
        for path in self.plugin_files:
            if not Path(path).is_file():
                raise UsageError(f"plugin file not found: {path}")
        if self.space_file:
            load_space_file(self.space_file)
        if not self.plugin_files:  # a plugin file's backbones are known once it is imported
            check_installed(self.backbone)


@dataclass
class Prepared:
    """What a search needs once the user's input has been checked and loaded."""

    backbone: Backbone
    weights: str
    preprocessor_options: dict[str, Any]
    preprocessor: Preprocessor
    space: dict[str, Any]
    train: Dataset
    val: Dataset
    notes: tuple[str, ...] = ()  # warnings about the input, for the search to show once


def load_split(config: SearchConfig, modality: str, preprocessor):
    """Load the training data and split off validation (or load the given validation set)."""
    from autotl.data import load_dataset, stratified_split

    image_size = getattr(preprocessor, "image_size", None)
    common = dict(image_size=image_size, text_col=config.text_col, label_col=config.label_col,
                  strict=config.strict)
    dataset = load_dataset(config.data, modality, **common)
    if config.val_data:
        val = load_dataset(config.val_data, modality, class_names=dataset.class_names, **common)
        return dataset, val
    return stratified_split(dataset, config.val_split, config.seed)


def split_fingerprint(train, val) -> str:
    """One fingerprint of a search's training and validation data, as the store keeps it."""
    from autotl.data import fingerprint

    joined = f"{fingerprint(train)}:{fingerprint(val)}"
    return hashlib.sha256(joined.encode()).hexdigest()


def config_record(config: SearchConfig, prepared: Prepared) -> dict[str, Any]:
    """The search's configuration as the store keeps it: enough to resume it from any folder."""
    from autotl.data import skipped_record

    record = with_absolute_paths(asdict(config), PATH_OPTIONS)
    record["plugin_files"] = [str(Path(p).expanduser().resolve()) for p in config.plugin_files]
    record.update(weights=prepared.weights, weights_identity=prepared.backbone.describe_weights(prepared.weights),
                  space=prepared.space, preprocessing=prepared.preprocessor.config(),
                  train_examples=len(prepared.train), val_examples=len(prepared.val),
                  planned_finetune_epochs=planned_finetune_epochs(config, prepared.backbone),
                  **skipped_record(prepared.train, prepared.val))
    return json.loads(json.dumps(record, default=str))


def planned_finetune_epochs(config: SearchConfig, backbone: Backbone) -> int:
    """The fine-tuning phase's epochs: --finetune-epochs, else the backbone's own (at most --epochs), else --epochs."""
    if config.finetune_epochs is not None:
        return config.finetune_epochs
    return min(config.epochs, backbone.default_finetune_epochs or config.epochs)


def config_from_record(row: Search, **overrides: Any) -> SearchConfig:
    """The SearchConfig a stored search was started with (`overrides` that are not None replace fields)."""
    known = {f.name for f in fields(SearchConfig)}
    values = {key: value for key, value in row.config.items() if key in known}
    values.setdefault("portfolio", False)  # a search from before portfolios drew all its trials
    values.update({key: value for key, value in ADDED_OPTIONS.items() if key not in values})
    values.update(name=row.name, workdir=str(Path(row.workdir).parent))
    values.update({key: value for key, value in overrides.items() if value is not None})
    return SearchConfig(**values)


def with_absolute_paths(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `values` with the paths named `names` made absolute (those set)."""
    return {key: str(Path(value).expanduser().resolve()) if key in names and value else value
            for key, value in values.items()}


def check_same_options(existing: Search, config: SearchConfig, completed: int) -> None:
    """`search --name NAME` with NAME in the store must be the same search (to resume it or see it done),
    but for a higher --max-trials, which extends it (`completed`: its completed trials)."""
    given = with_absolute_paths(asdict(config), PATH_OPTIONS)
    stored = with_absolute_paths(existing.config, PATH_OPTIONS)  # stores from before paths were kept absolute
    changed = [name for name in RESUME_OPTIONS if stored.get(name, ADDED_OPTIONS.get(name)) != given[name]
               and not (name == "max_trials" and extends(existing, config, completed))]
    if config.weights is not None and config.weights != existing.weights:
        changed.append("weights")
    _refuse_if_changed(existing, changed)


def extends(existing: Search, config: SearchConfig, completed: int) -> bool:
    """Whether `config` asks for more than the stored search had, more trials or a longer time limit:
    it may go on, to that many trials or for that long. No cap counts as more than any; a cap given to a
    search that had none (one bounded by its time limit) asks for more when it is above the `completed` trials."""
    stored_cap = existing.config.get("max_trials", config.max_trials)
    if stored_cap is None:
        more_trials = config.max_trials is not None and config.max_trials > completed
    else:
        more_trials = config.max_trials is None or config.max_trials > int(stored_cap)
    stored_limit = existing.config.get("time_limit")
    more_time = stored_limit is not None and config.time_limit is not None and config.time_limit > stored_limit
    return more_trials or more_time


def check_resumable(existing: Search, config: SearchConfig, prepared: Prepared) -> None:
    """The same search down to the loaded data, the resolved weights, the space and the preprocessing."""
    record = config_record(config, prepared)
    changed = [name for name in RESUME_FIELDS if not same_field(name, existing.config.get(name), record.get(name))]
    if existing.dataset_fingerprint != split_fingerprint(prepared.train, prepared.val):
        changed.insert(0, "data (their content changed)")
    _refuse_if_changed(existing, changed)


def same_field(name: str, stored: Any, current: Any) -> bool:
    """Whether a stored search's field holds what this run would record. A space stored before autotl added a
    hyperparameter is the same space when the current one fixes that hyperparameter at the value the stored
    search trained with (`autotl.search.space.TRAINED_AS_BEFORE`)."""
    if name == "space" and isinstance(stored, dict) and isinstance(current, dict):
        from autotl.search.space import TRAINED_AS_BEFORE

        added = {key: spec for key, spec in current.items() if key not in stored}
        return all(spec == {"values": [TRAINED_AS_BEFORE.get(key)]} for key, spec in added.items()) \
            and stored == {key: spec for key, spec in current.items() if key not in added}
    return stored == current


def _refuse_if_changed(existing: Search, changed: list[str]) -> None:
    if changed:
        raise UsageError(f"a search named {existing.name!r} already exists with a different {', '.join(changed)}; "
                         f"choose another --name, or continue it as it was with `autotl resume {existing.name}`")
