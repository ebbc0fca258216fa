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
a model file cannot run Python code) and called under a lock, with the image
bytes or pixels as sent, so it reads them exactly as ``autotl predict`` reads
files; each image is first decoded once in its request thread to check it.
"""

from __future__ import annotations

import base64
import binascii
import json
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import numpy as np

from autotl.errors import AutotlError, first_line
from autotl.quiet import import_keras_quietly

DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
DEFAULT_MAX_INSTANCES = 1024
REQUEST_TIMEOUT_S = 30.0  # a client that stops sending for this long is answered 408 and dropped
DRAIN_S = 10.0  # on shutdown, requests in flight get this long to finish
LINGER_S = 2.0  # after an error sent before the body was read, read (and drop) the rest for this long
ROUTES = {"/health": ("GET", "HEAD"), "/predict": ("POST",)}


class RequestError(Exception):
    """A bad request: answered with `status` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = " ".join(str(message).split())  # one line


class PredictionService:
    """An exported model behind the two endpoints, independent of HTTP."""

    def __init__(self, model, max_instances: int = DEFAULT_MAX_INSTANCES):
        self.model = model  # an autotl.runtime.loaded.LoadedModel
        self.manifest = model.manifest
        self.modality = self.manifest["modality"]
        self.labels = list(model.labels)
        self.max_instances = max_instances
        if self.modality == "image":
            self.image_size = tuple(int(v) for v in self.manifest["preprocessing"]["image_size"])
        self._lock = threading.Lock()

    def health(self) -> dict[str, Any]:
        search = self.manifest.get("search") or {}
        return {
            "status": "ok",
            "labels": self.labels,
            "format": self.model.format,
            "modality": self.modality,
            "backbone": self.manifest.get("backbone"),
            "model_dir": str(self.model.directory.resolve()),
            "search": search.get("name"),
            "trial": search.get("trial"),
            "max_instances": self.max_instances,
        }

    def predict(self, payload: Any) -> dict[str, Any]:
        instances = self._instances(payload)
        if self.modality == "image":
            examples = [self._image(i, instance) for i, instance in enumerate(instances)]
        else:
            examples = [self._text(i, instance) for i, instance in enumerate(instances)]
        try:
            with self._lock:
                predictions = self.model.predict(examples)
        except AutotlError as exc:  # an input the model's own reading refuses
            raise RequestError(422, first_line(exc)) from None
        return {"predictions": [{"label": p.label, "probabilities": p.probabilities} for p in predictions]}

    def _instances(self, payload: Any) -> list[Any]:
        if not isinstance(payload, dict):
            raise RequestError(400, f"the body must be a JSON object with \"instances\", got {_json_type(payload)}")
        if "instances" not in payload:
            raise RequestError(400, "missing field \"instances\" (a list of instances to predict)")
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise RequestError(400, f"\"instances\" must be a list, got {_json_type(instances)}")
        if not instances:
            raise RequestError(400, "\"instances\" is empty: give at least one instance")
        if len(instances) > self.max_instances:
            raise RequestError(413, f"{len(instances)} instances in one request; at most {self.max_instances} "
                                    "(--max-instances)")
        return instances

    def _image(self, index: int, instance: Any) -> bytes | np.ndarray:
        """The instance's image file bytes or uint8 pixels, checked to decode.

        The model is given these, not the decoded array, so that it reads them
        exactly as `autotl predict` reads a file, whatever the export format.
        """
        from autotl.data import read_image

        where = f"instance {index}"
        if not isinstance(instance, dict) or not ({"image_b64", "pixels"} & set(instance)):
            raise RequestError(400, f"{where}: an image model takes objects with \"image_b64\" (base64 of an "
                                    f"image file) or \"pixels\" (an array of uint8), got {_json_type(instance)}")
        if "image_b64" in instance and "pixels" in instance:
            raise RequestError(400, f"{where}: give \"image_b64\" or \"pixels\", not both")
        if "image_b64" in instance:
            source: bytes | np.ndarray = _decode_base64(where, instance["image_b64"])
        else:
            source = _pixel_array(where, instance["pixels"])
        try:
            read_image(source, self.image_size)
        except AutotlError as exc:
            raise RequestError(422, f"{where}: {first_line(exc)}") from None
        return source

    def _text(self, index: int, instance: Any) -> str:
        if isinstance(instance, dict) and "text" in instance:
            instance = instance["text"]
        elif isinstance(instance, dict):
            raise RequestError(400, f"instance {index}: missing field \"text\"")
        if not isinstance(instance, str):
            raise RequestError(400, f"instance {index}: a text model takes strings or objects with \"text\", "
                                    f"got {_json_type(instance)}")
        return instance


def _decode_base64(where: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{where}: \"image_b64\" must be a base64 string, got {_json_type(value)}")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    compact = "".join(value.split())  # `base64` wraps its output at 76 columns
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: \"image_b64\" is not valid base64 ({first_line(exc)})") from None
    if not data:
        raise RequestError(422, f"{where}: \"image_b64\" is empty")
    return data


def _pixel_array(where: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        raise RequestError(422, f"{where}: \"pixels\" must be a rectangular array (H, W) or (H, W, C)") from None
    if array.dtype.kind == "O" or array.dtype.kind not in "iuf" or array.size == 0:
        raise RequestError(422, f"{where}: \"pixels\" must be a non-empty array of integers 0 to 255")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise RequestError(422, f"{where}: \"pixels\" has shape {list(array.shape)}; use (H, W), (H, W, 1), "
                                "(H, W, 3) or (H, W, 4)")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise RequestError(422, f"{where}: \"pixels\" must be integers 0 to 255")
    if array.min() < 0 or array.max() > 255:
        raise RequestError(422, f"{where}: \"pixels\" must be integers 0 to 255, got {array.min()} to {array.max()}")
    return array.astype(np.uint8)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class _BodyTooLarge(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server: "PredictionServer"
    server_version = "autotl"
    default_request_version = "HTTP/1.0"  # a malformed request line still gets a status line
    timeout = REQUEST_TIMEOUT_S
    error_content_type = "application/json"

    # ----------------------------------------------------------------- dispatch
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def _dispatch(self) -> None:
        self._started = time.monotonic()
        self._body_unread = self._body_follows()  # until it is read
        self._note = ""
        try:
            path = urlsplit(self.path).path
            path = path.rstrip("/") or "/"
            allowed = ROUTES.get(path)
            if allowed is None:
                raise RequestError(404, f"no such endpoint {path!r}; use GET /health or POST /predict")
            if self.command not in allowed:
                raise RequestError(405, f"{self.command} is not allowed on {path}; use {' or '.join(allowed[:1])}")
            if path == "/health":
                self._send_json(200, self.server.service.health())
            else:
                payload = self._read_json()
                result = self.server.service.predict(payload)
                self._note = f"{len(result['predictions'])} instance(s)"
                self._send_json(200, result)
        except RequestError as exc:
            self._send_error_json(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug: one line for the client and the log, no traceback
            self._send_error_json(500, f"internal error ({type(exc).__name__}: {first_line(exc, default='')})")
        finally:
            self._linger()

    # ----------------------------------------------------------------- the body
    def _body_follows(self) -> bool:
        """Whether the request has a body: a Content-Length, chunks, or (HTTP/1.0) up to the end of the connection."""
        if "Transfer-Encoding" in self.headers:
            return True
        length = self.headers.get("Content-Length")
        if length is not None:
            return length.strip() != "0"
        return self.request_version == "HTTP/1.0" and self.command not in ("GET", "HEAD")

    def _read_json(self) -> Any:
        body = self._read_body()
        try:
            return json.loads(body)
        except UnicodeDecodeError:
            raise RequestError(400, "malformed JSON: the body is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise RequestError(400, f"malformed JSON: {exc}") from None
        except RecursionError:
            raise RequestError(400, "malformed JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise RequestError(400, f"malformed JSON: {first_line(exc)}") from None

    def _read_body(self) -> bytes:
        limit = self.server.max_request_bytes
        encoding = self.headers.get("Transfer-Encoding", "").strip().lower()
        length = self.headers.get("Content-Length")
        try:
            if encoding and encoding != "identity":
                if encoding != "chunked":
                    raise RequestError(400, f"unsupported Transfer-Encoding {encoding!r} (use chunked or none)")
                body = self._read_chunked(limit)
            elif length is not None:
                try:
                    size = int(length)
                    if size < 0:
                        raise ValueError
                except ValueError:
                    raise RequestError(400, f"invalid Content-Length {length!r}") from None
                if size > limit:
                    raise _BodyTooLarge
                body = self.rfile.read(size)
                if len(body) < size:
                    raise RequestError(400, f"the body ended after {len(body)} of {size} bytes (Content-Length)")
            elif self._body_unread:  # HTTP/1.0 without a Content-Length: the body runs to the end of the connection
                body = self.rfile.read(limit + 1)
                if len(body) > limit:
                    raise _BodyTooLarge
            else:  # HTTP/1.1 with neither: no body
                body = b""
        except _BodyTooLarge:
            raise RequestError(413, f"request body over {limit} bytes (--max-request-bytes)") from None
        except (TimeoutError, socket.timeout):
            raise RequestError(408, f"the body did not arrive within {self.timeout:g} s") from None
        self._body_unread = False
        if not body:
            raise RequestError(400, "empty body: send a JSON object with \"instances\"")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError
            except ValueError:
                raise RequestError(400, "malformed chunked body") from None
            if size == 0:
                break
            total += size
            if total > limit:
                raise _BodyTooLarge
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise RequestError(400, "malformed chunked body")
            parts.append(chunk)
        while self.rfile.readline(8194) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts)

    def _linger(self) -> None:
        """After answering without reading the body, read and drop what the client still sends.

        Closing a socket with unread data makes the kernel reset the connection,
        and the client may lose the answer (a 413, say) before it reads it.
        """
        if not self._body_unread:
            return
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:
            pass

    # ----------------------------------------------------------------- responses
    def _send_json(self, status: int, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 405:
            self.send_header("Allow", ", ".join(ROUTES[urlsplit(self.path).path.rstrip("/")]))
        if self._body_unread:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except OSError:  # the client went away
                pass
        self._log(status, len(body))

    def _send_error_json(self, status: int, message: str) -> None:
        self._note = message
        self._send_json(status, {"error": message})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unknown method...), as JSON."""
        self._started = getattr(self, "_started", time.monotonic())
        self._body_unread = False
        self.close_connection = True
        if not hasattr(self, "command") or self.command is None:
            self.command = ""
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = "error"
        if code == 501 and self.command:
            code, text = 405, f"{self.command} is not allowed; use GET /health or POST /predict"
        self._note = text
        body = json.dumps({"error": " ".join(str(text).split())}).encode()
        try:
            self.send_response(code, None)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass
        self._log(code, len(body))

    def version_string(self) -> str:
        return self.server_version

    # ----------------------------------------------------------------- logging
    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # one line per request is written by _log, with the time it took

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.client_address[0]} {format % args}")

    def _log(self, status: int, size: int) -> None:
        elapsed = (time.monotonic() - getattr(self, "_started", time.monotonic())) * 1000
        request = f"{self.command} {urlsplit(self.path).path}" if getattr(self, "path", None) else "-"
        note = f"  {self._note}" if getattr(self, "_note", "") else ""
        self.server.log(f"{self.client_address[0]} \"{_printable(request)}\" {status} {size}B {elapsed:.1f}ms"
                        f"{_printable(note)}")


def _printable(text: str, width: int = 200) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


class PredictionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: PredictionService, max_request_bytes: int,
                 log: Callable[[str], None]):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.service = service
        self.max_request_bytes = max_request_bytes
        self._log = log
        self._in_flight = 0
        self._idle = threading.Condition()
        super().__init__(address, Handler)

    def log(self, line: str) -> None:
        self._log(line)

    def handle_error(self, request, client_address) -> None:
        """A connection that failed outside the handler's own error handling: one line, no traceback."""
        exc = sys.exc_info()[1]
        self.log(f"{client_address[0]} connection error: {type(exc).__name__}: {first_line(exc, default='')}")

    def process_request(self, request, client_address) -> None:
        with self._idle:  # counted before its thread starts, so a shutdown cannot miss it
            self._in_flight += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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


def load_service(model_dir: str | Path, model_format: str = "keras", plugin_files: Sequence[str] = (),
                 max_instances: int = DEFAULT_MAX_INSTANCES) -> PredictionService:
    """Load the export in `model_dir` for serving (Keras safe mode: no code from the model file)."""
    from autotl.runtime.loaded import LoadedModel
    from autotl.backbones.registry import load_registry

    directory = Path(model_dir).expanduser()
    if not directory.exists():
        raise AutotlError(f"model folder {directory} does not exist")
    if not directory.is_dir():
        raise AutotlError(f"{directory} is a file, not an exported model folder")
    import_keras_quietly()
    model = LoadedModel(directory, model_format, load_registry(list(plugin_files)))  # refuses code (safe mode)
    return PredictionService(model, max_instances=max_instances)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, model_format: str = "keras",
          plugin_files: Sequence[str] = (), max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
          max_instances: int = DEFAULT_MAX_INSTANCES, log: Callable[[str], None] | None = None) -> None:
    """Serve the export in `model_dir` until SIGINT or SIGTERM, then return (after in-flight requests finish)."""
    log = log or _stderr_logger()
    service = load_service(model_dir, model_format, plugin_files, max_instances)
    try:
        server = PredictionServer((host, port), service, max_request_bytes, log)
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
