"""The Python API: run a search, resume it, or join one as a distributed worker. The CLI
(`autotl.cli`) is a thin shell over these functions.

    from autotl import api
    result = api.search(api.SearchConfig(data="photos/", backbone="efficientnet_lite0", max_trials=5))
    print(result.best.value, result.best.hyperparameters)

`search`, `resume` and `join` are the entry points; the configuration they take lives in
`autotl.config`, and the stages of one run of a search in `autotl.search.session`. Exporting
the best model is `autotl.export.exporter.export`, and predicting with an export
`autotl.runtime.loaded.predict`.
"""

from __future__ import annotations

import os
from pathlib import Path

from autotl.backbones.registry import Registry, load_registry
from autotl.config import SearchConfig, config_from_record, load_split
from autotl.errors import AutotlError
from autotl.insight.progress import Reporter
from autotl.search.budget import Deadline
from autotl.search.distributed import check_reachable, default_tuner_id, parse_address, worker_environment
from autotl.search.fleet import trial_process
from autotl.search.session import (DEADLINE_KEY, WORKER, SearchResult, SearchSession, objective_direction,
                                   training_plan)
from autotl.store import COMPLETED, DEFAULT_STORE, Search, Store

__all__ = ["SearchConfig", "SearchResult", "config_from_record", "join", "load_split", "objective_direction",
           "resume", "search", "training_plan"]


def search(config: SearchConfig, store: Store | str = DEFAULT_STORE, reporter: Reporter | None = None,
           registry: Registry | None = None, started_at: float | None = None) -> SearchResult:
    """Run a whole search and return what the store holds about it.

    If the store already holds an unfinished search of `config.name` (killed, interrupted,
    stopped by failures), it is resumed: its completed trials count, the trials that were
    running are marked interrupted and run again. A search that had completed is returned as it is.
    `config.time_limit` counts from `started_at` (a `time.time()`; default: now): the CLI passes
    the moment its process started, so that the limit covers its imports too.
    """
    session = SearchSession.begin(config, store, reporter or Reporter(), started_at)
    if session.already_finished:
        return session.result(already_finished=True)
    # The trial process starts now, so that its imports overlap the data loading.
    with trial_process(session.trials_here, config.worker_memory_growth_mb) as process:
        session.prepare(registry or load_registry(config.plugin_files))
        with session.locked():
            session.plan()
            session.run(process)
            session.choose()
    return session.finish()


def resume(search_ref: str | int, store: Store | str = DEFAULT_STORE, reporter: Reporter | None = None,
           registry: Registry | None = None, started_at: float | None = None, *, max_trials: int | None = None,
           time_limit: float | None = None) -> SearchResult:
    """Continue a search (by name or id) with the configuration it was started with; `max_trials` or
    `time_limit`, where given, replace the stored ones, and extend a finished search that they ask more of.
    A time limit without `max_trials` lifts the trial cap, as ``autotl search --time-limit`` has none."""
    store = store if isinstance(store, Store) else Store(store)
    config = config_from_record(store.get_search(search_ref), max_trials=max_trials, time_limit=time_limit)
    if time_limit is not None and max_trials is None:
        config.max_trials = None
    return search(config, store, reporter, registry, started_at)


def join(search_ref: str | int, chief: str, store: Store | str = DEFAULT_STORE, *, data: str | None = None,
         workdir: str | None = None, tuner_id: str | None = None, reporter: Reporter | None = None,
         registry: Registry | None = None) -> int:
    """Run trials of a distributed search as a worker of the chief at `chief` (HOST:PORT).

    The search's configuration comes from the store; `data` points at this machine's copy
    of the data (it must be the same data: checked by fingerprint). Returns how many
    trials this worker completed.
    """
    store = store if isinstance(store, Store) else Store(store)
    row, (host, port) = check_joinable(search_ref, chief, store)
    config = config_from_record(row, data=data)
    if config.tensorboard_dir is not None:
        from autotl.insight.board import require_tensorboard

        require_tensorboard()
    deadline_at = row.config.get(DEADLINE_KEY) if config.time_limit is not None else None
    session = SearchSession(config, store, reporter or Reporter(), Deadline(deadline_at) if deadline_at is not None else None,
                            role=WORKER, row=row)
    with trial_process(config.trials_per_worker, config.worker_memory_growth_mb) as process:
        session.prepare(registry or load_registry(config.plugin_files))
        if workdir is not None:
            row.workdir = str(Path(workdir).expanduser().resolve() / row.name)
        os.environ.update(worker_environment(tuner_id or default_tuner_id(), host, port))
        session.plan()
        return session.run(process)


def check_joinable(search_ref: str | int, chief: str, store: Store) -> tuple[Search, tuple[str, int]]:
    """The search to join and its chief's address, once the search is known to be unfinished and the
    chief to answer: the checks `join` makes before anything slow (the CLI's worker, before Keras' imports)."""
    host, port = parse_address(chief)
    row = store.get_search(search_ref)
    if row.status == COMPLETED:
        raise AutotlError(f"search {row.name!r} has already finished; there is nothing to join")
    check_reachable(host, port)
    return row, (host, port)
