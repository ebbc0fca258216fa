"""Quantized exports on the two visible workloads: size, latency, validation and test accuracy of each format,
float32 against `--quantize float16` and `--quantize int8` (issue 16, item 3).

    python benchmarks/quantization.py                      # both workloads, seed 0
    python benchmarks/quantization.py --workloads images   # one
    python benchmarks/quantization.py --again              # measure the recorded workloads again too

Each workload: its seed-0 split as the quality benchmark writes it, one default search with
`--time-limit` (default 10 minutes: a model of the kind a user exports, not the best one), then three exports
of its best model (keras + tflite + onnx: float32, float16, int8 with `--max-accuracy-drop 1` so that the
figures of a model that would be refused are shown too) and `autotl evaluate` of each format on the test
split. Results: results/quantization.md and .json, rewritten after each workload with the results of
earlier runs kept (each with its command and revision); a restart skips the workloads already recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import quality  # its data writers and CLI helpers
import quality_records
from quality import REPO, SIZES, WORKLOADS, autotl, search_command, write_workload

MODES = ("float32", "float16", "int8")
FORMATS = ("keras", "tflite", "onnx")


def run(command: list[str]) -> str:
    import subprocess

    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command[2:]))} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def measure(workload: str, work: Path, time_limit_s: int) -> dict:
    modality, _ = WORKLOADS[workload]
    paths = write_workload(workload, work / "data", SIZES[workload], seed=0)
    run(search_command(modality, paths, work, "quantized", 0, time_limit_s, []))
    store = ["--store", f"sqlite:///{work / 'autotl.db'}"]
    rows = {}
    for mode in MODES:
        out = work / mode
        quantize = [] if mode == "float32" else ["--quantize", mode, "--max-accuracy-drop", "1"]
        run(autotl("export", "quantized", "--out", out, *[a for f in FORMATS for a in ("--format", f)], *quantize,
                   *store))
        manifest = json.loads((out / "autotl.json").read_text())
        measured = (manifest.get("quantization") or {}).get("formats", {})
        for fmt in FORMATS:
            scored = json.loads(run(autotl("evaluate", out, paths["test"], "--format", fmt, "--json", *store)))
            figure = measured.get(fmt, {})
            rows[f"{mode} {fmt}"] = {"size_bytes": (out / f"model.{fmt}").stat().st_size,
                                     "latency_ms": figure.get("latency_ms"), "val_accuracy": figure.get("val_accuracy"),
                                     "test_accuracy": round(scored["accuracy"], 6)}
    return {"workload": workload, "time_limit_s": time_limit_s, "rows": rows}


def recorded(out: Path) -> dict[str, dict]:
    """The results already in `out`, by workload."""
    path = out / "quantization.json"
    if not path.exists():
        return {}
    return {result["workload"]: result for result in json.loads(path.read_text())["results"]}


def write(out: Path, results: dict[str, dict]) -> None:
    ordered = [results[name] for name in WORKLOADS if name in results]
    (out / "quantization.json").write_text(json.dumps({"results": ordered}, indent=2) + "\n")
    lines = ["# Quantized exports on the visible workloads", "",
             "Seed 0 of each workload; one default search each, then `autotl export --quantize`. Latency: median of "
             "100 single-example runs on this machine's CPU, measured by the export (float32 rows: not measured). "
             "Test accuracy: `autotl evaluate` on the workload's test split.", ""]
    for result in ordered:
        lines += [f"## {result['workload']} (search --time-limit {result['time_limit_s']}s)", "",
                  f"Command: `{result['command']}`, at {result['revision']}.", "",
                  "| export | size (MB) | latency (ms) | validation accuracy | test accuracy |", "|---|---|---|---|---|"]
        for name, row in result["rows"].items():
            latency = "" if row["latency_ms"] is None else f"{row['latency_ms']:.2f}"
            val = "" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
            lines.append(f"| {name} | {row['size_bytes'] / 2**20:.2f} | {latency} | {val} | "
                         f"{row['test_accuracy']:.4f} |")
        lines.append("")
    (out / "quantization.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--time-limit-s", type=int, default=600)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--again", action="store_true", help="measure workloads already recorded in --out again")
    args = parser.parse_args(argv)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    results = recorded(args.out)
    for workload in args.workloads:
        if workload in results and not args.again:
            quality.log(f"{workload}: recorded at {results[workload]['revision']}, skipped")
            continue
        with tempfile.TemporaryDirectory() as work:
            measured = measure(workload, Path(work), args.time_limit_s)
        results[workload] = {**measured, "command": command, "revision": quality_records.git_revision()}
        write(args.out, results)
        quality.log(f"{workload}: {measured['rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
