"""The HTTP side of `autotl serve`: routing, reading request bodies, JSON responses and logging.

`Handler` turns each request into a call of the `PredictionService` and its answer
(or `RequestError`) into a JSON response; `PredictionServer` runs handlers in a
bounded pool of threads and counts the requests in flight, so a shutdown can let them finish.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from autotl.errors import first_line, typed_first_line
from autotl.runtime.service import PredictionService, RequestError

DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
DEFAULT_THREADS = 8  # requests handled at once; the model itself runs one (micro-)batch at a time
REQUEST_TIMEOUT_S = 30.0  # a client that stops sending for this long is answered 408 and dropped
LINGER_S = 2.0  # after an error sent before the body was read, read (and drop) the rest for this long
ROUTES = {"/health": ("GET", "HEAD"), "/predict": ("POST",)}


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
            self._send_error_json(500, f"internal error ({typed_first_line(exc)})")
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
    """Handles each connection in one of `threads` worker threads (a bounded pool: more connections wait for a
    free thread instead of each starting one)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: PredictionService, max_request_bytes: int,
                 log: Callable[[str], None], threads: int = DEFAULT_THREADS):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.service = service
        self.max_request_bytes = max_request_bytes
        self._log = log
        self._in_flight = 0
        self._idle = threading.Condition()
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="autotl-request")
        super().__init__(address, Handler)

    def log(self, line: str) -> None:
        self._log(line)

    def handle_error(self, request, client_address) -> None:
        """A connection that failed outside the handler's own error handling: one line, no traceback."""
        exc = sys.exc_info()[1]
        self.log(f"{client_address[0]} connection error: {typed_first_line(exc)}")

    def process_request(self, request, client_address) -> None:
        with self._idle:  # counted before its thread starts, so a shutdown cannot miss it
            self._in_flight += 1
        try:
            self._pool.submit(self.process_request_thread, request, client_address)
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

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
