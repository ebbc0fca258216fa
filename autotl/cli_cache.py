"""`autotl cache`: list, prune or empty the activation cache (`autotl.cache.entries`)."""

from __future__ import annotations

import json

import click

from autotl.cli_errors import handle_errors
from autotl.cli_options import CACHE_DIR_OPTION, DURATION, JSON_OPTION
from autotl.errors import UsageError
from autotl.insight.table import print_table


@click.group()
def cache() -> None:
    """List, prune or empty the activation cache (what the frozen backbones computed)."""


@cache.command("ls")
@CACHE_DIR_OPTION
@JSON_OPTION
@handle_errors(needs_keras=False)
def cache_ls(cache_dir: str | None, as_json: bool) -> None:
    """List the cached activations: one entry per backbone cut and dataset split."""
    from autotl.cache.entries import ActivationCache

    activations = ActivationCache(cache_dir)
    rows = [entry.summary() for entry in activations.entries()]
    total = sum(r["size_mb"] for r in rows)
    if as_json:
        click.echo(json.dumps({"directory": str(activations.directory), "entries": rows,
                               "total_mb": round(total, 2)}, indent=2))
        return
    click.echo(f"cache: {activations.directory}  ({len(rows)} entries, {total:.1f} MB)")
    if rows:
        print_table(rows, ["key", "backbone", "tensor", "split", "examples", "shape", "dtype", "size_mb", "created_at"])


@cache.command("clear")
@click.argument("keys", nargs=-1)
@CACHE_DIR_OPTION
@handle_errors(needs_keras=False)
def cache_clear(keys: tuple[str, ...], cache_dir: str | None) -> None:
    """Remove the entries KEYS (see `autotl cache ls`), or every entry when none is given."""
    from autotl.cache.entries import ActivationCache

    activations = ActivationCache(cache_dir)
    count, size = activations.clear(list(keys) or None)
    click.echo(f"removed {count} entries ({size / 2**20:.1f} MB) from {activations.directory}")


@cache.command("prune")
@click.option("--older-than", "unused_for", type=DURATION, metavar="DURATION",
              help="Remove the entries no search has read for this long (e.g. 7d, 12h).")
@click.option("--max-gb", type=click.FloatRange(min=0), help="Then remove the least recently used entries until "
                                                             "the cache fits in this many GB.")
@CACHE_DIR_OPTION
@handle_errors(needs_keras=False)
def cache_prune(unused_for: float | None, max_gb: float | None, cache_dir: str | None) -> None:
    """Remove the entries unused for longer than --older-than, then the least recently used beyond --max-gb.

    Searches bound the cache themselves (`autotl search --cache-max-gb`, 10 GB by default)."""
    from autotl.cache.entries import ActivationCache

    if unused_for is None and max_gb is None:
        raise UsageError("say what to prune: --older-than DURATION, --max-gb N, or both")
    activations = ActivationCache(cache_dir)
    count, size = activations.prune(unused_for=unused_for,
                                    max_bytes=None if max_gb is None else int(max_gb * 2**30))
    left = activations.entries()
    click.echo(f"removed {count} entries ({size / 2**20:.1f} MB) from {activations.directory}; "
               f"{len(left)} left ({sum(e.size_bytes for e in left) / 2**20:.1f} MB)")
