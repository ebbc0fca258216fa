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
