"""One process at a time per search: an advisory lock on a file in the search's folder.

The operating system releases the lock when its holder exits, however it exits
(SIGKILL included), so a killed search can be resumed at once, while a search
that is still running cannot be resumed a second time beside itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from autotl.errors import AutotlError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; resuming a running search is then the user's care
    fcntl = None

LOCK_NAME = "search.lock"


class SearchLock:
    def __init__(self, folder: str | os.PathLike, search_name: str):
        self.path = Path(folder) / LOCK_NAME
        self.search_name = search_name
        self._handle = None

    def __enter__(self) -> "SearchLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise AutotlError(f"search {self.search_name!r} is running in another process ({holder}); "
                                  "wait for it or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this machine'}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *_exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None
