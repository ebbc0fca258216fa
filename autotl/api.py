"""The Python API. The CLI (`autotl.cli`) is a thin shell over these functions.

    from autotl import api
    result = api.search(api.SearchConfig(data="photos/", backbone="efficientnet_lite0", max_trials=5))
    api.export(result.store, result.search.name, "exported/")
    api.predict("exported/", ["photos/cat/1.jpg"])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import data as data_module
from . import space as space_module
from .backbone import Backbone, Preprocessor
from .errors import AutotlError, UsageError, first_line
from .plan import Objective, TrainingPlan, TrialData
from .progress import Reporter
from .registry import Registry, load_registry
from .store import COMPLETED, DEFAULT_STORE, FAILED, INTERRUPTED, Search, Store, Trial
from .worker import TrialWorker, WorkerSpec, remove_trial_data, save_trial_data

TUNERS = ("random", "bayesian", "hyperband")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CACHE_DTYPES = ("auto", "float32", "float16")
TRIAL_DATA_DIR = "data"  # inside the search's work folder, while trial workers run


@dataclass
class SearchConfig:
    """Everything a search needs; the CLI's options map one to one onto these fields."""

    data: str
    backbone: str
    weights: str | None = None
    name: str | None = None
    tuner: str = "random"
    max_trials: int = 5
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
    strict: bool = False
    plugin_files: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.tuner not in TUNERS:
            raise UsageError(f"unknown tuner {self.tuner!r} (use one of {', '.join(TUNERS)})")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r} (use one of {', '.join(PRECISIONS)})")
        if self.cache_dtype not in CACHE_DTYPES:
            raise UsageError(f"unknown cache dtype {self.cache_dtype!r} (use one of {', '.join(CACHE_DTYPES)})")
        for option, value in (("max-trials", self.max_trials), ("epochs", self.epochs),
                              ("batch-size", self.batch_size)):
            if value < 1:
                raise UsageError(f"--{option} must be at least 1")
        if self.cache_memory_mb is not None and self.cache_memory_mb < 0:
            raise UsageError("--cache-memory cannot be negative")
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
        if self.objective not in ("val_accuracy", "val_loss"):
            raise UsageError("--objective must be val_accuracy or val_loss")


@dataclass
class SearchResult:
    store: Store
    search: Search
    best: Trial | None
    trials: list[Trial]


def objective_direction(objective: str) -> str:
    return "min" if objective.endswith("loss") else "max"


def search(config: SearchConfig, store: Store | str = DEFAULT_STORE, reporter: Reporter | None = None,
           registry: Registry | None = None) -> SearchResult:
    """Run a whole search and return what the store holds about it."""
    config.validate()
    store = store if isinstance(store, Store) else Store(store)
    reporter = reporter or Reporter()
    worker = None
    if config.trials_per_worker > 0:
        worker = TrialWorker(None, config.trials_per_worker, config.worker_memory_growth_mb)
        worker.launch()  # its imports overlap the data loading below
    try:
        prepared = _prepare(config, registry or load_registry(config.plugin_files))
        row = _create_search_row(store, config, prepared)
    except BaseException:
        if worker is not None:
            worker.close()
        raise
    reporter.search_started(row.name, store.display_url, config.max_trials)
    try:
        _run_tuner(config, store, row, prepared, reporter, worker)
    except KeyboardInterrupt:
        store.interrupt_running_trials(row.id, "interrupted by the user")
        store.finish_search(row.id, INTERRUPTED, "interrupted by the user")
        raise
    except Exception as exc:
        store.finish_search(row.id, FAILED, first_line(exc))
        if isinstance(exc, AutotlError):
            raise
        raise AutotlError(f"search {row.name!r} failed: {first_line(exc)}") from exc
    finally:
        if worker is not None:
            worker.close()
    best = store.best_trial(row)
    if best is None:
        store.finish_search(row.id, FAILED, "no trial completed")
        raise AutotlError(f"search {row.name!r}: no trial completed (see `autotl trials {row.name}`)")
    store.finish_search(row.id, COMPLETED)
    return SearchResult(store, store.get_search(row.id), best, store.list_trials(row.id))


@dataclass
class _Prepared:
    """What a search needs once the user's input has been checked and loaded."""

    backbone: Backbone
    weights: str
    preprocessor_options: dict[str, Any]
    preprocessor: Preprocessor
    space: dict[str, Any]
    train: data_module.Dataset
    val: data_module.Dataset


def _prepare(config: SearchConfig, registry: Registry) -> _Prepared:
    backbone = registry.get(config.backbone)
    weights = config.weights or backbone.default_weights
    user_space = space_module.load_space_file(config.space_file) if config.space_file else None
    options = {"image_size": _image_size(config.image_size), "sequence_length": config.sequence_length}
    preprocessor = backbone.preprocessor(weights, options)
    # After the preprocessor: a plugin may size its proposals (e.g. BERT's layer count) by the weights.
    space = space_module.build_space(backbone.modality, backbone.search_space(), user_space)
    train, val = load_split(config, backbone.modality, preprocessor)
    _check_build(backbone, weights, preprocessor)
    _check_precision(config.precision)
    return _Prepared(backbone, weights, options, preprocessor, space, train, val)


def _create_search_row(store: Store, config: SearchConfig, prepared: _Prepared) -> Search:
    name = config.name or _default_name(config.backbone)
    return store.create_search(
        name=name, backbone=prepared.backbone.name, weights=prepared.weights, modality=prepared.backbone.modality,
        dataset_path=str(Path(config.data).resolve()),
        dataset_fingerprint=_split_fingerprint(prepared.train, prepared.val),
        labels=list(prepared.train.class_names), config=_config_record(config, prepared),
        objective=config.objective, direction=objective_direction(config.objective),
        workdir=str(Path(config.workdir).expanduser().resolve() / name),
    )


def _run_tuner(config: SearchConfig, store: Store, row: Search, prepared: _Prepared, reporter: Reporter,
               worker: TrialWorker | None) -> None:
    # Keras and KerasTuner are imported here, not at module level, so that
    # `autotl --help` and the listing commands stay fast.
    import keras_tuner as kt

    from .hypermodel import TransferHyperModel
    from .tuner import TransferTuner, make_oracle

    plan = TrainingPlan(epochs=config.epochs,
                        finetune_epochs=config.epochs if config.finetune_epochs is None else config.finetune_epochs,
                        batch_size=config.batch_size, patience=config.patience, seed=config.seed,
                        precision=config.precision, cache=config.cache,
                        cache_dir=str(Path(config.cache_dir).expanduser().resolve()) if config.cache_dir else None,
                        cache_storage=config.cache_dtype,
                        cache_memory_mb=_cache_memory_mb(config.cache_memory_mb))
    num_classes = len(prepared.train.class_names)
    hypermodel = TransferHyperModel(prepared.backbone, prepared.weights, prepared.preprocessor, num_classes,
                                    prepared.space)
    oracle = make_oracle(config.tuner, kt.Objective(row.objective, row.direction), config.max_trials,
                         config.epochs, config.seed)
    preprocess = prepared.preprocessor
    data = TrialData(preprocess(prepared.train.examples), prepared.train.labels,
                     preprocess(prepared.val.examples), prepared.val.labels)
    workdir = Path(row.workdir)
    if worker is not None:
        _configure_worker(worker, store, row, prepared, plan, data, config.plugin_files)
    try:
        tuner = TransferTuner(oracle, hypermodel, store=store, search_id=row.id, plan=plan, reporter=reporter,
                              workdir=workdir, max_trials=config.max_trials, worker=worker, overwrite=True)
        tuner.search(data, verbose=0)
    finally:
        if worker is not None:
            worker.close()
            remove_trial_data(workdir / TRIAL_DATA_DIR)


def _configure_worker(worker: TrialWorker, store: Store, row: Search, prepared: _Prepared, plan: TrainingPlan,
                      data: TrialData, plugin_files: list[str]) -> None:
    data_dir = Path(row.workdir) / TRIAL_DATA_DIR
    save_trial_data(data, data_dir)
    worker.configure(WorkerSpec(
        store_url=store.url, search_id=row.id, backbone=prepared.backbone.name, weights=prepared.weights,
        plugin_files=[str(Path(p).resolve()) for p in plugin_files],
        preprocessor_options=prepared.preprocessor_options, num_classes=len(prepared.train.class_names),
        space=prepared.space, plan=plan, objective=Objective(row.objective, row.direction),
        workdir=row.workdir, data_dir=str(data_dir)))


def load_split(config: SearchConfig, modality: str, preprocessor):
    """Load the training data and split off validation (or load the given validation set)."""
    image_size = getattr(preprocessor, "image_size", None)
    common = dict(image_size=image_size, text_col=config.text_col, label_col=config.label_col,
                  strict=config.strict)
    dataset = data_module.load_dataset(config.data, modality, **common)
    if config.val_data:
        val = data_module.load_dataset(config.val_data, modality, class_names=dataset.class_names, **common)
        return dataset, val
    return data_module.stratified_split(dataset, config.val_split, config.seed)


def _check_build(backbone, weights, preprocessor) -> None:
    """Build the backbone once before the search, so a bad weights source fails fast in one line."""
    try:
        model = backbone.build(weights, preprocessor)
        blocks = backbone.blocks(model)
    except AutotlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, reported in one line
        raise AutotlError(f"backbone {backbone.name!r} failed to build from weights {weights!r}: "
                          f"{first_line(exc)}") from None
    if not blocks:
        raise AutotlError(f"backbone {backbone.name!r} reports no blocks to fine-tune")
    del model
    import keras

    keras.utils.clear_session()


def _cache_memory_mb(requested: int | None) -> int:
    if requested is not None:
        return requested
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 4 / 2**20)
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows)
        return 4096


def _check_precision(precision: str) -> None:
    """Run one small layer under the dtype policy, so an unsupported one fails before any trial."""
    if precision == "float32":
        return
    import keras
    import numpy as np

    from .trial import dtype_policy

    try:
        with dtype_policy(precision):
            keras.ops.convert_to_numpy(keras.layers.Dense(2)(np.ones((1, 2), "float32")))
    except Exception as exc:  # noqa: BLE001 - the backend's refusal, in one line
        raise UsageError(f"precision {precision} does not run on the {keras.backend.backend()} backend here: "
                         f"{first_line(exc)}") from None


def _split_fingerprint(train, val) -> str:
    joined = f"{data_module.fingerprint(train)}:{data_module.fingerprint(val)}"
    return hashlib.sha256(joined.encode()).hexdigest()


def _image_size(value: int | None):
    return None if value is None else (int(value), int(value))


def _default_name(backbone: str) -> str:
    return f"{backbone}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _config_record(config: SearchConfig, prepared: _Prepared) -> dict[str, Any]:
    record = asdict(config)
    record.update(weights=prepared.weights, weights_identity=prepared.backbone.describe_weights(prepared.weights),
                  space=prepared.space, preprocessing=prepared.preprocessor.config(),
                  train_examples=len(prepared.train), val_examples=len(prepared.val),
                  skipped_examples=[list(s) for s in (prepared.train.skipped or [])][:100])
    return json.loads(json.dumps(record, default=str))
