"""Write a TensorFlow SavedModel from a `.keras` file, whatever backend autotl runs on.

Keras writes a SavedModel natively only on its TensorFlow backend. A `.keras`
file is backend-independent, so on torch or JAX the export reloads it in a
child process running the TensorFlow backend:

    python -m autotl.tf_export MODEL.keras OUT_DIR [--plugin FILE ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .errors import AutotlError


def export_saved_model(model, keras_file: Path, out_dir: Path, plugin_files: list[str]) -> None:
    """Write `model` (loaded from `keras_file`) as a SavedModel in `out_dir`."""
    import keras

    if keras.backend.backend() == "tensorflow":
        model.export(str(out_dir), format="tf_saved_model", verbose=False)
        return
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, "-m", "autotl.tf_export", str(keras_file), str(out_dir)]
    for plugin in plugin_files:
        args += ["--plugin", str(plugin)]
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise AutotlError(f"SavedModel export (TensorFlow backend) failed: {lines[-1] if lines else 'no output'}")


def _export_here(keras_file: Path, out_dir: Path, plugin_files: list[str]) -> None:
    import keras

    from . import layers  # noqa: F401 - registers autotl's serialisable layers
    from .registry import load_registry

    load_registry(plugin_files)  # imports plugin modules, registering their custom layers
    model = keras.saving.load_model(keras_file, compile=False)
    model.export(str(out_dir), format="tf_saved_model", verbose=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keras_file", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--plugin", action="append", default=[])
    args = parser.parse_args(argv)
    _export_here(args.keras_file, args.out_dir, args.plugin)


if __name__ == "__main__":
    main()
