"""Run an autotl export the way someone without autotl would: only the format's own runtime.

    python tests/reload_export.py FORMAT EXPORT_DIR INPUTS.json OUT.npz

Importing `autotl` (or the built-in plugins) is blocked in this process, so the export cannot
lean on autotl's code. INPUTS.json names the raw inputs (image files, arrays of pixels of any
size in an .npz, texts) and the inputs of the `.keras` model (an .npz); each format runs what
it takes, and OUT.npz holds the probabilities under the same names. The last line printed is
the JSON list of the heavy packages the process imported.
"""

from __future__ import annotations

import importlib.abc
import json
import sys

BLOCKED = ("autotl", "autotl_plugins")


class _NoAutotl(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} cannot be imported here: this process runs an export without autotl")
        return None


sys.meta_path.insert(0, _NoAutotl())

import numpy as np  # noqa: E402


def _arrays(path: str) -> list[np.ndarray]:
    with np.load(path) as stored:
        return [stored[str(i)] for i in range(len(stored.files))]


def _model_inputs(path: str):
    with np.load(path) as stored:
        if stored.files == ["x"]:
            return stored["x"]
        return {name: stored[name] for name in stored.files}


def run_keras(directory: str, spec: dict) -> dict[str, np.ndarray]:
    import keras

    model = keras.saving.load_model(f"{directory}/model.keras", compile=False)  # safe mode: no code from the file
    return {"model_inputs": np.asarray(model.predict(_model_inputs(spec["model_inputs"]), verbose=0))}


def run_savedmodel(directory: str, spec: dict) -> dict[str, np.ndarray]:
    import tensorflow as tf

    if "texts" in spec:
        import tensorflow_text  # noqa: F401 - registers the tokenizer's ops

    loaded = tf.saved_model.load(f"{directory}/saved_model")
    default = loaded.signatures["serving_default"]
    results = {}
    if "files" in spec:
        contents = [open(path, "rb").read() for path in spec["files"]]
        results["files"] = default(images=tf.constant(contents))["probabilities"].numpy()
    if "arrays" in spec:
        pixels = loaded.signatures["pixels"]
        results["arrays"] = np.concatenate([pixels(pixels=tf.constant(a[None]))["probabilities"].numpy()
                                            for a in _arrays(spec["arrays"])])
    if "texts" in spec:
        results["texts"] = default(texts=tf.constant(spec["texts"]))["probabilities"].numpy()
    return results


def run_onnx(directory: str, spec: dict) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(f"{directory}/model.onnx", providers=["CPUExecutionProvider"])
    if "arrays" in spec:
        return {"arrays": np.concatenate([session.run(["probabilities"], {"pixels": a[None]})[0]
                                          for a in _arrays(spec["arrays"])])}
    inputs = _model_inputs(spec["model_inputs"])
    feed = {i.name: inputs[i.name].astype(np.int32) for i in session.get_inputs()}
    return {"model_inputs": session.run(["probabilities"], feed)[0]}


def run_tflite(directory: str, spec: dict) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=f"{directory}/model.tflite").get_signature_runner("serving_default")
    if "arrays" in spec:
        return {"arrays": np.concatenate([runner(pixels=a[None])["probabilities"] for a in _arrays(spec["arrays"])])}
    inputs = _model_inputs(spec["model_inputs"])
    return {"model_inputs": runner(**{name: inputs[name].astype(np.int32) for name in runner.get_input_details()})
            ["probabilities"]}


def main() -> None:
    fmt, directory, inputs, out = sys.argv[1:]
    with open(inputs) as handle:
        spec = json.load(handle)
    results = {"keras": run_keras, "savedmodel": run_savedmodel, "onnx": run_onnx, "tflite": run_tflite}[fmt](
        directory, spec)
    np.savez(out, **results)
    heavy = ("autotl", "autotl_plugins", "tensorflow", "keras", "keras_hub", "torch", "jax")
    print(json.dumps(sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in heavy})))


if __name__ == "__main__":
    main()
