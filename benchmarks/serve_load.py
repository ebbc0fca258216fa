"""`autotl serve` under load: requests per second and latency with 8 concurrent clients, each request one image,
with micro-batching off (``--batch-wait-ms 0``: each request runs alone, as before it existed) and on (the default).

    python benchmarks/serve_load.py                # builds its export, then results/serve_load.{md,json}
    python benchmarks/serve_load.py --model DIR    # an export of your own

The export it builds: EfficientNet-Lite0 (ImageNet weights) at 96x96, one depth-0 trial on 100 real MNIST digits
(serving speed depends on the model, not on how well it was trained). Each setting: a server of its own, 5 s of
warm-up, then `--seconds` of 8 clients sending one real digit PNG each per request, back to back. Run it alone on
the machine: the clients and the server share its cores.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import REPO, machine, write_mnist_digits

SETTINGS = {"micro-batching off": "0", "micro-batching on (5 ms)": "5"}
CLIENTS = 8
WARM_UP_S = 5.0


def build_export(work: Path) -> Path:
    data = write_mnist_digits(work / "digits", per_class=10)
    space = work / "space.yaml"
    space.write_text("unfreeze_depth: {values: [0]}\n")
    store = f"sqlite:///{work / 'autotl.db'}"
    common = ["--store", store]
    run(["search", str(data), "--backbone", "efficientnet_lite0", "--image-size", "96", "--max-trials", "1",
         "--epochs", "2", "--space", str(space), "--name", "served", "--workdir", str(work / "runs"), *common])
    run(["export", "served", "--out", str(work / "export"), "--format", "keras", *common])
    return work / "export"


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "autotl", *args], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def start_server(model: Path, batch_wait_ms: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "autotl", "serve", str(model), "--port", "0",
                                "--batch-wait-ms", batch_wait_ms], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    for line in process.stderr:
        if line.startswith("serving "):
            threading.Thread(target=drain, args=(process.stderr,), daemon=True).start()  # its request log
            return process, line.rsplit(" ", 1)[1].strip()
    raise SystemExit(f"the server did not start (exit {process.wait()})")


def drain(stream) -> None:
    for _ in stream:
        pass


def load(url: str, bodies: list[bytes], seconds: float) -> list[float]:
    """Latencies (s) of the requests that `CLIENTS` clients completed in `seconds`, each sending back to back."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        sent = index
        while time.monotonic() < stop_at:
            body = bodies[sent % len(bodies)]
            started = time.perf_counter()
            request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            with lock:
                latencies.append(time.perf_counter() - started)
            sent += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def measure(model: Path, batch_wait_ms: str, bodies: list[bytes], seconds: float) -> dict:
    process, url = start_server(model, batch_wait_ms)
    try:
        load(url, bodies, WARM_UP_S)
        started = time.monotonic()
        latencies = sorted(load(url, bodies, seconds))
        elapsed = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"batch_wait_ms": float(batch_wait_ms), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def write(out: Path, model: Path, results: dict, seconds: float, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "model": str(model), "clients": CLIENTS, "seconds": seconds,
              "machine": machine(), "results": results}
    (out / "serve_load.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# `autotl serve` under load", "", f"Command: `{command}`", "",
             f"{CLIENTS} concurrent clients, one real MNIST digit PNG per request, back to back, for {seconds:g} s "
             f"after {WARM_UP_S:g} s of warm-up; EfficientNet-Lite0 at 96x96 (`.keras`). Machine: "
             f"{record['machine']['cpu']}, {record['machine']['cores']} cores.", "",
             "| setting | requests/s | p50 latency (ms) | p99 latency (ms) | requests |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests']} |"
              for name, r in results.items()]
    off, on = results[list(SETTINGS)[0]], results[list(SETTINGS)[1]]
    lines += ["", f"Micro-batching: {on['requests_per_s'] / off['requests_per_s']:.2f}x the requests per second, "
                  f"p99 latency {on['p99_ms'] / off['p99_ms']:.2f}x (same run, same machine)."]
    (out / "serve_load.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="an export to serve (default: build one)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per setting")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        model = args.model or build_export(Path(work))
        digits = sorted(Path(work, "digits").glob("*/*.png"))[:40] if not args.model else []
        if not digits:
            digits = sorted(write_mnist_digits(Path(work) / "requests", per_class=4).glob("*/*.png"))
        bodies = [json.dumps({"instances": [{"image_b64": base64.b64encode(p.read_bytes()).decode()}]}).encode()
                  for p in digits]
        results = {name: measure(model, wait, bodies, args.seconds) for name, wait in SETTINGS.items()}
        write(args.out, model, results, args.seconds, "python " + " ".join([Path(sys.argv[0]).as_posix(),
                                                                            *sys.argv[1:]]))
    for name, result in results.items():
        print(f"{name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
