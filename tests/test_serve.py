"""`autotl serve`: a real server subprocess answering real HTTP requests.

One tiny image search (and one tiny text search) is exported once for the module;
the server must return what `autotl predict` prints for the same inputs, answer
every bad request with a one-line JSON error and the right status, and keep serving.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotl import api

from autotl.export import exporter
from autotl.store import Store

from conftest import REPO, TINY_PLUGIN, autotl_command, run_cli

TINY_TEXT_PLUGIN = REPO / "tests" / "plugins" / "tiny_text.py"
LIMIT = 64 * 1024  # --max-request-bytes of the shared server
TOLERANCE = 1e-6  # server vs `autotl predict` probabilities (they agree exactly in practice)
REQUEST_LINE = re.compile(r'^\S+ "[A-Z]+ \S*" \d{3} \d+B \d+\.\dms')


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image_export(tmp_path_factory, mnist_dir) -> Path:
    root = tmp_path_factory.mktemp("serve")
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                              image_size=16, max_trials=1, epochs=3, finetune_epochs=0, batch_size=16, seed=0,
                              trials_per_worker=0, name="served", workdir=str(root / "runs"))
    api.search(config, store)
    exported = exporter.export(store, "served", root / "export", formats=("keras", "savedmodel"),
                               plugin_files=[str(TINY_PLUGIN)])
    return exported.directory


@pytest.fixture(scope="module")
def digits(mnist_dir) -> list[Path]:
    """Six real MNIST PNGs of different classes."""
    return [sorted((mnist_dir / str(d)).glob("*.png"))[0] for d in (0, 1, 3, 5, 7, 9)]


class Server:
    """`autotl serve ... --port 0` in a subprocess; its stderr is read as it comes."""

    def __init__(self, *args, startup_timeout: float = 180):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("AUTOTL_DEBUG", None)
        self.process = subprocess.Popen([*autotl_command(), "serve", *map(str, args), "--port", "0"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.process.kill()
                pytest.fail(f"the server did not start: {self.lines}")
            if line is None:
                pytest.fail(f"the server exited ({self.process.wait()}): {self.lines}")
            if line.startswith("serving "):
                self.url = line.rsplit(" ", 1)[1]
                break

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def call(self, path: str, body: bytes | dict | list | None = None, method: str | None = None,
             headers: dict | None = None) -> tuple[int, dict, dict]:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        deadline = time.monotonic() + 10
        while (not self.lines or self.lines[-1] != "stopped") and time.monotonic() < deadline:
            time.sleep(0.05)
        return code


@pytest.fixture(scope="module")
def server(image_export):
    running = Server(image_export, "--plugin", TINY_PLUGIN, "--max-request-bytes", LIMIT)
    yield running
    if running.process.poll() is None:
        assert running.stop(signal.SIGTERM) == 0
        assert "Traceback" not in "\n".join(running.lines)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def cli_predict(model_dir: Path, inputs, *extra) -> list[dict]:
    return json.loads(run_cli("predict", model_dir, *inputs, "--json", *extra, check=True).stdout)


def assert_same_predictions(served: list[dict], printed: list[dict], labels: list[str]) -> None:
    assert [p["label"] for p in served] == [p["label"] for p in printed]
    for s, p in zip(served, printed):
        assert list(s["probabilities"]) == labels
        np.testing.assert_allclose([s["probabilities"][k] for k in labels], [p["probabilities"][k] for k in labels],
                                   rtol=0, atol=TOLERANCE)


def raw_exchange(port: int, data: bytes, half_close: bool = True) -> tuple[int, dict]:
    """Send raw bytes, read the whole answer: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --------------------------------------------------------------------------- endpoints


def test_health_describes_the_model(server, image_export):
    status, headers, body = server.call("/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["status"] == "ok"
    assert body["labels"] == [str(d) for d in range(10)]
    assert body["format"] == "keras" and body["modality"] == "image" and body["backbone"] == "tiny_cnn"
    assert body["model_dir"] == str(image_export.resolve())
    assert body["search"] == "served" and body["trial"] == 1


def test_predict_images_equals_autotl_predict_on_the_same_files(server, image_export, digits):
    printed = cli_predict(image_export, digits, "--plugin", TINY_PLUGIN)
    status, _, body = server.call("/predict", {"instances": [{"image_b64": b64(p)} for p in digits]})
    assert status == 200
    labels = [str(d) for d in range(10)]
    assert_same_predictions(body["predictions"], printed, labels)
    # The same images as pixel arrays: grayscale (H, W) and RGB (H, W, 3), read the same way.
    pixels = [np.asarray(Image.open(p)).tolist() for p in digits[:3]]
    pixels += [np.asarray(Image.open(p).convert("RGB")).tolist() for p in digits[3:]]
    status, _, body = server.call("/predict", {"instances": [{"pixels": p} for p in pixels]})
    assert status == 200
    assert_same_predictions(body["predictions"], printed, labels)


def test_predict_accepts_wrapped_base64_and_data_urls(server, digits):
    wrapped = "\n".join(re.findall(".{1,76}", b64(digits[0])))  # as `base64` prints it
    status, _, body = server.call("/predict", {"instances": [{"image_b64": wrapped},
                                                             {"image_b64": "data:image/png;base64," + b64(digits[0])}]})
    assert status == 200
    first, second = body["predictions"]
    # The same image decoded from both encodings. Two rows of one batch may differ in float32's last bits
    # (the kernels' vector lanes): the same label, the same probabilities to 1e-6.
    assert first["label"] == second["label"]
    assert first["probabilities"] == pytest.approx(second["probabilities"], abs=1e-6)


def test_a_chunked_body_is_read(server, digits):
    body = json.dumps({"instances": [{"image_b64": b64(digits[1])}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/predict", body=iter([body[:100], body[100:]]), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert len(json.loads(response.read())["predictions"]) == 1
    conn.close()


BAD_REQUESTS = {
    # name: (body, status, fragment of the error)
    "malformed_json": (b'{"instances": [', 400, "malformed JSON"),
    "not_utf8": (b'{"instances": ["\xff"]}', 400, "not UTF-8"),
    "nested_too_deeply": (b"[" * 60000, 400, "malformed JSON"),
    "empty_body": (b"", 400, "empty body"),
    "not_an_object": (b"[1, 2]", 400, "JSON object"),
    "missing_instances": ({"inputs": []}, 400, 'missing field "instances"'),
    "instances_not_a_list": ({"instances": {"image_b64": "x"}}, 400, '"instances" must be a list'),
    "no_instances": ({"instances": []}, 400, "empty"),
    "missing_image_field": ({"instances": [{"image": "abc"}]}, 400, '"image_b64"'),
    "a_path_is_not_an_image": ({"instances": ["/etc/passwd"]}, 400, "instance 0"),
    "both_fields": ({"instances": [{"image_b64": "aGk=", "pixels": [[0]]}]}, 400, "not both"),
    "b64_not_a_string": ({"instances": [{"image_b64": 12}]}, 400, "base64 string"),
    "bad_base64": ({"instances": [{"image_b64": "not base64!"}]}, 400, "not valid base64"),
    "undecodable_image": ({"instances": [{"image_b64": base64.b64encode(b"plain text, no image").decode()}]},
                          422, "cannot read image"),
    "ragged_pixels": ({"instances": [{"pixels": [[1, 2], [3]]}]}, 422, "rectangular"),
    "pixels_out_of_range": ({"instances": [{"pixels": [[0, 300], [2, 3]]}]}, 422, "0 to 255"),
    "pixels_not_numbers": ({"instances": [{"pixels": [["a", "b"]]}]}, 422, "integers"),
    "pixels_wrong_shape": ({"instances": [{"pixels": [[[1, 2], [3, 4]]]}]}, 422, "shape [1, 2, 2]"),
    "pixels_fractional": ({"instances": [{"pixels": [[0.5, 1], [2, 3]]}]}, 422, "integers"),
    "number_too_long": (b'{"instances": [{"pixels": [[' + b"9" * 5000 + b']]}]}', 400, "malformed JSON"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_predict_requests_get_a_one_line_json_error(server, name):
    body, status, fragment = BAD_REQUESTS[name]
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    got, headers, answer = server.call("/predict", body, method="POST")
    assert got == status, answer
    assert headers["Content-Type"] == "application/json"
    assert set(answer) == {"error"} and fragment in answer["error"]
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_an_http_1_1_post_without_a_body_is_answered_at_once(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/predict")
    conn.endheaders()  # neither Content-Length nor Transfer-Encoding: no body
    response = conn.getresponse()
    assert response.status == 400 and "empty body" in json.loads(response.read())["error"]
    conn.close()


def test_a_truncated_image_is_422_and_names_the_instance(server, digits):
    whole = {"image_b64": b64(digits[0])}
    truncated = {"image_b64": base64.b64encode(digits[0].read_bytes()[:120]).decode()}
    status, _, answer = server.call("/predict", {"instances": [whole, truncated]})
    assert status == 422 and answer["error"].startswith("instance 1: cannot read image")


def test_unknown_paths_are_404_and_wrong_methods_405(server):
    status, _, answer = server.call("/nowhere")
    assert status == 404 and "/nowhere" in answer["error"]
    status, _, answer = server.call("/predict/extra", {"instances": []})
    assert status == 404
    status, headers, answer = server.call("/predict")
    assert status == 405 and headers["Allow"] == "POST" and "use POST" in answer["error"]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, answer = server.call("/health", b"{}" if method != "DELETE" else None, method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    status, _, answer = server.call("/health", method="BREW")
    assert status == 405 and "BREW" in answer["error"]
    status, answer = raw_exchange(server.port, b"GET /health HTTP/9\r\n\r\n")
    assert status == 400 and "version" in answer["error"]
    status, answer = raw_exchange(server.port, b"nonsense\r\n\r\n")
    assert status == 400 and "error" in answer


def test_oversize_bodies_get_413(server):
    too_big = json.dumps({"instances": ["x" * LIMIT]}).encode()
    status, _, answer = server.call("/predict", too_big, method="POST")
    assert status == 413 and str(LIMIT) in answer["error"] and "--max-request-bytes" in answer["error"]

    # Refused from its Content-Length alone: the server answers at once, without waiting for the body.
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders(b'{"instances": [')
    response = conn.getresponse()
    assert response.status == 413 and time.monotonic() - started < 10
    conn.close()

    # Without a Content-Length: chunked, and HTTP/1.0 up to the end of the connection.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("POST", "/predict", body=iter([b"x" * 50000] * 4), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "error" in json.loads(response.read())
    conn.close()
    status, answer = raw_exchange(server.port, b"POST /predict HTTP/1.0\r\n\r\n" + b"[" * (LIMIT + 1))
    assert status == 413 and "over" in answer["error"]


def test_too_many_instances_get_413(image_export):
    # A server of its own: --max-instances 2 (also checks that the model loads from the SavedModel).
    running = Server(image_export, "--plugin", TINY_PLUGIN, "--format", "savedmodel", "--max-instances", "2")
    try:
        status, _, body = running.call("/health")
        assert status == 200 and body["format"] == "savedmodel" and body["max_instances"] == 2
        status, _, body = running.call("/predict", {"instances": [{"pixels": [[0]]}] * 3})
        assert status == 413 and "at most 2" in body["error"]
        status, _, body = running.call("/predict", {"instances": [{"pixels": [[0]]}] * 2})
        assert status == 200 and len(body["predictions"]) == 2
    finally:
        assert running.stop(signal.SIGINT) == 0  # Ctrl-C: a clean stop
    assert "received SIGINT, shutting down" in running.lines and running.lines[-1] == "stopped"


def test_an_image_over_max_pixels_is_413_from_its_header(image_export, tmp_path):
    """Issue 16, 4: a 144-megapixel PNG of 136 KB was decoded (3 s, +230 MB) before being answered."""
    running = Server(image_export, "--plugin", TINY_PLUGIN, "--max-pixels", "1000")
    try:
        assert running.call("/health")[2]["max_pixels"] == 1000
        Image.new("RGB", (40, 30), "white").save(tmp_path / "wide.png")
        status, _, body = running.call("/predict", {"instances": [{"pixels": [[0] * 20] * 20},
                                                                  {"image_b64": b64(tmp_path / "wide.png")}]})
        assert (status, body) == (413, {"error": "instance 1: a 40x30 image (0.0012 megapixels); at most 0.001 "
                                                 "megapixels (--max-pixels)"})
        status, _, body = running.call("/predict", {"instances": [{"pixels": [[0] * 40] * 30}]})
        assert status == 413 and body["error"].startswith("instance 0: a 40x30 image")
        assert running.call("/predict", {"instances": [{"pixels": [[0] * 25] * 40}]})[0] == 200
    finally:
        assert running.stop() == 0


def test_requests_that_arrive_together_run_as_one_batch_with_the_same_answers(image_export, digits):
    """Issue 16, 4: micro-batching. Eight requests of one image each, sent at once, take fewer model calls than
    eight, and each gets what it gets alone."""
    from autotl.runtime.service import load_service

    alone = load_service(image_export, plugin_files=[str(TINY_PLUGIN)], batch_wait_ms=0)
    together = load_service(image_export, plugin_files=[str(TINY_PLUGIN)], batch_wait_ms=200)
    requests = [{"instances": [{"image_b64": b64(digits[i % len(digits)])}]} for i in range(8)]
    expected = [alone.predict(request) for request in requests]
    assert alone.batcher.batches == 8
    start = threading.Barrier(8)

    def send(request):
        start.wait()
        return together.predict(request)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, requests))
    assert together.batcher.batches < 8
    for answer, wanted in zip(answers, expected):
        assert answer["predictions"][0]["label"] == wanted["predictions"][0]["label"]
        assert list(answer["predictions"][0]["probabilities"].values()) == pytest.approx(
            list(wanted["predictions"][0]["probabilities"].values()), abs=1e-5)


def test_requests_are_handled_by_a_bounded_pool_of_threads(image_export):
    from autotl.runtime.http import PredictionServer
    from autotl.runtime.service import load_service

    service = load_service(image_export, plugin_files=[str(TINY_PLUGIN)])
    seen, real_health = set(), service.health

    def health():
        seen.add(threading.current_thread().name)
        time.sleep(0.05)
        return real_health()

    service.health = health
    server = PredictionServer(("127.0.0.1", 0), service, 2**20, lambda line: None, threads=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: urllib.request.urlopen(url, timeout=30).status, range(12)))
        assert statuses == [200] * 12
        assert 1 <= len(seen) <= 2 and all(name.startswith("autotl-request") for name in seen)
    finally:
        server.shutdown()
        server.server_close()


def test_the_server_keeps_serving_after_bad_requests_and_under_concurrency(server, digits):
    for body in (b"{", b"[]", json.dumps({"instances": [{"image_b64": "@@"}]}).encode()):
        assert server.call("/predict", body, method="POST")[0] == 400
    raw_exchange(server.port, b"\x00\x01\x02 garbage\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port)):
        pass  # a client that connects and goes away
    assert server.call("/health")[0] == 200
    request = {"instances": [{"image_b64": b64(p)} for p in digits]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.call("/predict", request), range(16)))
    assert all(status == 200 for status, _, _ in answers)
    for _, _, body in answers:  # batched with other requests: the same answer, up to float rounding
        assert [p["label"] for p in body["predictions"]] == [p["label"] for p in answers[0][2]["predictions"]]
        for mine, first in zip(body["predictions"], answers[0][2]["predictions"]):
            assert list(mine["probabilities"].values()) == pytest.approx(list(first["probabilities"].values()),
                                                                        abs=1e-5)
    assert server.process.poll() is None


def test_each_request_is_logged_in_one_line_on_stderr(server, image_export):
    marker = f"/log-check-{os.getpid()}-{time.monotonic_ns()}"
    server.call(marker)
    deadline = time.monotonic() + 10
    while not any(marker in line for line in server.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = [line for line in server.lines if marker in line]
    assert len(logged) == 1 and REQUEST_LINE.match(logged[0]) and " 404 " in logged[0]
    assert server.lines[0].startswith(f"serving {image_export} (keras, labels 0, 1, 2")
    assert server.lines[0].endswith(f"on {server.url}")
    assert not any("Traceback" in line for line in server.lines)


def test_it_binds_127_0_0_1_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(ConnectionRefusedError):  # another loopback address: not listened on
        socket.create_connection(("127.0.0.2", server.port), timeout=5).close()


# --------------------------------------------------------------------------- text models


@pytest.fixture(scope="module")
def text_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_text")
    rows = [("a warm, funny and moving film", "fresh"), ("dull, flat and far too long", "rotten")] * 12
    (root / "reviews.csv").write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(data=str(root / "reviews.csv"), backbone="tiny_text",
                              plugin_files=[str(TINY_TEXT_PLUGIN)], max_trials=1, epochs=2, finetune_epochs=0,
                              trials_per_worker=0, name="texts", workdir=str(root / "runs"))
    api.search(config, store)
    return exporter.export(store, "texts", root / "export", formats=("keras",),
                           plugin_files=[str(TINY_TEXT_PLUGIN)]).directory


def test_text_model_predictions_equal_autotl_predict(text_export):
    texts = ["A triumph of style and heart.", "Dull, overlong and witless.", "/etc/passwd", ""]
    printed = cli_predict(text_export, texts, "--text", "--plugin", TINY_TEXT_PLUGIN)
    running = Server(text_export, "--plugin", TINY_TEXT_PLUGIN)
    try:
        status, _, health = running.call("/health")
        assert status == 200 and health["labels"] == ["fresh", "rotten"] and health["modality"] == "text"
        status, _, body = running.call("/predict", {"instances": [texts[0], {"text": texts[1]}, *texts[2:]]})
        assert status == 200
        assert_same_predictions(body["predictions"], printed, ["fresh", "rotten"])
        for bad, fragment in (([{"txt": "x"}], 'missing field "text"'), ([3], "strings"),
                              ([{"image_b64": "aGk="}], 'missing field "text"')):
            status, _, answer = running.call("/predict", {"instances": bad})
            assert status == 400 and fragment in answer["error"]
    finally:
        assert running.stop() == 0


# --------------------------------------------------------------------------- refusals


def test_a_model_dir_that_does_not_exist_is_one_line_and_exit_1(tmp_path):
    result = run_cli("serve", tmp_path / "absent", "--port", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: model folder {tmp_path / 'absent'} does not exist"
    result = run_cli("serve", tmp_path, "--port", "0")  # a folder, but no export
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {tmp_path} is not an autotl export (no autotl.json)"


def test_a_port_in_use_is_one_line_and_exit_1(image_export):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run([*autotl_command(), "serve", str(image_export), "--plugin", str(TINY_PLUGIN),
                                 "--port", str(port)], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.slow
def test_a_model_with_python_code_is_refused_by_safe_mode(tmp_path, image_export, digits):
    """A .keras file with a Lambda layer would run its code when loaded: serve and predict refuse it."""
    import keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((16, 16, 3))
    flat = keras.layers.Flatten()(inputs)
    # Writes `marker` whenever Keras runs it (a constant in the code: no closure to serialise).
    code = eval(f"lambda x: x * float(__import__('pathlib').Path({str(marker)!r}).write_text('!'))")  # noqa: S307
    hijack = keras.layers.Lambda(code)
    outputs = keras.layers.Dense(10, activation="softmax")(hijack(flat))
    model = keras.Model(inputs, outputs)
    evil = shutil.copytree(image_export, tmp_path / "export")
    model.save(evil / "model.keras")
    marker.unlink()  # building the model here ran the lambda once; loading it must not

    refusal = [f"Error: refusing to load {evil}: its model holds Python code (e.g. a Lambda layer), "
               "which Keras safe mode does not run"]
    for command in (["serve", evil, "--plugin", TINY_PLUGIN, "--port", "0"],
                    ["predict", evil, digits[0], "--plugin", TINY_PLUGIN]):
        result = run_cli(*command)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == refusal
    assert not marker.exists()
    keras.saving.load_model(evil / "model.keras", safe_mode=False)  # what the refusal prevented
    assert marker.exists()
