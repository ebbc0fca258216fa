"""Options and parameter types several `autotl` commands share (`autotl.cli`, `autotl.cli_cache`)."""

from __future__ import annotations

import click

from autotl.errors import UsageError
from autotl.search.budget import parse_duration

STORE_OPTION = click.option(
    "--store", default="sqlite:///autotl.db", show_default=True, envvar="AUTOTL_STORE", show_envvar=True,
    help="SQLAlchemy URL of the trial store, or a SQLite file path.")
PLUGIN_OPTION = click.option(
    "--plugin", "plugin_files", multiple=True, type=click.Path(dir_okay=False),
    help="A Python file defining Backbone plugins (repeatable).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
CACHE_DIR_OPTION = click.option(
    "--cache-dir", type=click.Path(file_okay=False), envvar="AUTOTL_CACHE_DIR", show_envvar=True,
    help="Where cached activations live  [default: ~/.cache/autotl]")


class Duration(click.ParamType):
    """A duration such as ``90s``, ``10m``, ``2h`` or ``1h30m``, in seconds (`autotl.search.budget.parse_duration`)."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
