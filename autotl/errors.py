"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class AutotlError(Exception):
    """A problem with the user's input or environment (not a bug in autotl).

    The message must be one line that says what is wrong and, where it helps,
    what to do about it.
    """

    exit_code = 1


class UsageError(AutotlError):
    """A wrong argument or option value: exit code 2, as click uses."""

    exit_code = 2


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first non-blank line of an exception's message, for one-line error reports.

    Falls back to `default`, or to the exception's type name when none is given.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__ if default is None else default


def typed_first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, or just ``Type`` when its message is blank.

    For failures of code autotl does not own (a plugin, a library), where the type
    often says more than the message.
    """
    message = first_line(exc, default="")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
