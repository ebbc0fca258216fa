"""`autotl serve`: answer JSON prediction requests for an exported model over HTTP.

Standard library only (`http.server.ThreadingHTTPServer`). Endpoints::

    GET  /health    200 {"status": "ok", "labels": [...], "format": ..., "model_dir": ..., "search": ...}
    POST /predict   200 {"predictions": [{"label": ..., "probabilities": {label: p, ...}}, ...]}

Request bodies of ``/predict``:

* image models: ``{"instances": [{"image_b64": "<base64 of an image file>"}, {"pixels": [[[r, g, b], ...]]}]}``
  (an image file's bytes are decoded by `autotl.data.read_image`, exactly as
  ``autotl predict`` reads the file; pixels are uint8 values, (H, W), (H, W, 1),
  (H, W, 3) or (H, W, 4), resized the same way);
* text models: ``{"instances": ["text", {"text": "..."}]}``.

Every error is a JSON ``{"error": "<one line>"}`` with a 4xx status (5xx for a bug,
never with a traceback): 400 malformed JSON or request, 404 unknown path, 405 wrong
method, 408 body too slow, 411/400 unreadable body framing, 413 body over
``--max-request-bytes`` (checked from Content-Length before reading anything, and
while reading a body without one) or too many instances, 422 an image or pixel
array that cannot be used. One line per request is logged to stderr.

The model is loaded through `autotl.runtime.loaded.LoadedModel` (Keras ``safe_mode``:
a model file cannot run Python code). Each request is read in one of ``--threads``
worker threads, its images decoded there exactly as ``autotl predict`` reads files
(an image of more than ``--max-pixels`` is refused from its header, 413, before it is
decoded); the model then runs the requests that arrived within ``--batch-wait-ms`` of
each other as one batch (`autotl.runtime.batcher`), one batch at a time.

What a request means is `autotl.runtime.service`; reading and answering HTTP is
`autotl.runtime.http`; this module runs the two until SIGINT or SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from autotl.errors import AutotlError, first_line
from autotl.runtime.batcher import DEFAULT_WAIT_MS
from autotl.runtime.http import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_THREADS, PredictionServer
from autotl.runtime.service import DEFAULT_MAX_INSTANCES, DEFAULT_MAX_PIXELS, load_service

DRAIN_S = 10.0  # on shutdown, requests in flight get this long to finish


def _stderr_logger() -> Callable[[str], None]:
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    return log


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, model_format: str = "keras",
          plugin_files: Sequence[str] = (), max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
          max_instances: int = DEFAULT_MAX_INSTANCES, max_pixels: int = DEFAULT_MAX_PIXELS,
          threads: int = DEFAULT_THREADS, batch_wait_ms: float = DEFAULT_WAIT_MS,
          log: Callable[[str], None] | None = None) -> None:
    """Serve the export in `model_dir` until SIGINT or SIGTERM, then return (after in-flight requests finish)."""
    log = log or _stderr_logger()
    service = load_service(model_dir, model_format, plugin_files, max_instances, max_pixels, batch_wait_ms)
    try:
        server = PredictionServer((host, port), service, max_request_bytes, log, threads)
    except OSError as exc:
        raise AutotlError(f"cannot listen on {host}:{port}: {exc.strerror or first_line(exc)}") from None
    except (OverflowError, UnicodeError) as exc:
        raise AutotlError(f"cannot listen on {host}:{port}: {first_line(exc)}") from None

    stopping = threading.Event()

    def stop(signum, frame) -> None:
        if stopping.is_set():  # a second Ctrl-C: stop waiting for requests in flight
            raise KeyboardInterrupt
        stopping.set()
        log(f"received {signal.Signals(signum).name}, shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    labels = ", ".join(service.labels)
    if len(labels) > 60:
        labels = labels[:59] + "…"
    log(f"serving {model_dir} ({service.model.format}, labels {labels}) on {server.url}")
    try:
        server.serve_forever(poll_interval=0.2)
        if not server.wait_idle(DRAIN_S):
            log(f"requests still running after {DRAIN_S:g} s; stopping anyway")
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("stopped")
