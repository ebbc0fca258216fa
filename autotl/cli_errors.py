"""How the command line ends on an error: one line on stderr and click's exit code, never a traceback
(AUTOTL_DEBUG=1 shows the traceback of an unexpected error)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import click

from autotl.errors import AutotlError, typed_first_line
from autotl.quiet import import_keras_quietly


def handle_errors(command: Callable | None = None, *, needs_keras: bool = True) -> Callable:
    """Turn user errors into one line on stderr and the right exit code."""
    if command is None:
        return functools.partial(handle_errors, needs_keras=needs_keras)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if needs_keras:
                import_keras_quietly()
            return command(*args, **kwargs)
        except AutotlError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except BrokenPipeError:  # output piped into `head` and the like
            sys.stderr.close()
            sys.exit(0)
        except click.exceptions.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: one line, traceback on request
            if os.environ.get("AUTOTL_DEBUG"):
                raise
            click.echo(f"Error: internal error ({typed_first_line(exc)}); "
                       "rerun with AUTOTL_DEBUG=1 for the traceback", err=True)
            sys.exit(1)

    return wrapper
