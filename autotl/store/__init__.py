"""The trial store: every search, trial, epoch metric and artifact, in any SQL database SQLAlchemy reaches.

Import from here: `Store` opens a store by URL (a SQLite file by default,
`DEFAULT_STORE`), creating or upgrading its tables, and is the only way the rest of
autotl reads or writes it; `Search`, `Trial`, `EpochMetric`, `Artifact` and `Evaluation` are the
rows it returns (`as_dict` makes one JSON-friendly), and `RUNNING`, `COMPLETED`,
`FAILED` and `INTERRUPTED` the statuses a search or trial goes through;
`parse_where` reads the ``NAME=VALUE`` conditions `Store.select_trials` filters by.
The tables live in `autotl.store.models`, their history (`SCHEMA_VERSION`) in
`autotl.store.migrations`, the listings' queries in `autotl.store.queries`, the
facade in `autotl.store.store`.
"""

from autotl.store.migrations import SCHEMA_VERSION
from autotl.store.models import (COMPLETED, FAILED, INTERRUPTED, RUNNING, Artifact, EpochMetric, Evaluation, Search,
                                 Trial, as_dict)
from autotl.store.queries import SearchSummary, parse_where
from autotl.store.store import DEFAULT_STORE, Store, normalize_url

__all__ = ["COMPLETED", "DEFAULT_STORE", "FAILED", "INTERRUPTED", "RUNNING", "SCHEMA_VERSION", "Artifact",
           "EpochMetric", "Evaluation", "Search", "SearchSummary", "Store", "Trial", "as_dict", "normalize_url", "parse_where"]
