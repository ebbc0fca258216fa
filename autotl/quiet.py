"""Keep TensorFlow's native chatter (start-up, converters) off the user's terminal.

TensorFlow's C++ runtime logs a few INFO lines (oneDNN, CUDA stubs, CPU
features) to file descriptor 2 while it is imported, before
``TF_CPP_MIN_LOG_LEVEL`` takes effect. We point fd 2 at a temporary file during
that import and replay the captured text only if the import fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

from autotl.errors import AutotlError


def import_keras_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # gRPC (KerasTuner's distributed mode) logs its own failures natively; autotl reports them in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401 - the import is the point

            try:
                import tensorflow  # noqa: F401 - TF logs again when it is imported itself
            except ImportError:
                pass
            # tf.function's retracing advice is for model authors; each trial builds new models by design.
            logging.getLogger("tensorflow").setLevel(logging.ERROR)
        except ModuleNotFoundError as exc:
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            if (exc.name or "").split(".")[0] != backend:
                _replay(saved, capture)
                raise
            raise AutotlError(f"KERAS_BACKEND={backend} needs the {backend} package, which is not installed: "
                              f"install it, or unset KERAS_BACKEND to use TensorFlow") from None
        except BaseException:
            _replay(saved, capture)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def native_stderr_held():
    """Keep what native code writes to file descriptor 2 inside the block off the terminal.

    TFLite's MLIR converter prints its diagnostics there (a failed conversion: a dump of the
    graph's locations, pages long) besides raising them; the exception is what autotl reports.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _replay(saved: int, capture) -> None:
    """Give the failed import's native output back to the terminal."""
    os.dup2(saved, 2)
    capture.seek(0)
    sys.stderr.write(capture.read().decode(errors="replace"))
