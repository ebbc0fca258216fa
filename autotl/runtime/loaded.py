"""Loading an autotl export and predicting raw inputs with it, in any of its formats.

`LoadedModel` reads the export's manifest, loads the plugin's preprocessor from the
export folder, and runs the format asked for: the `.keras` model (in Keras safe mode),
the SavedModel, the ONNX model or the TFLite model. Images are read exactly as the
search read them (`autotl.data.read_image`), or decoded at their own size for the
formats that resize inside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autotl.backbones.registry import Registry
from autotl.errors import AutotlError, UsageError
from autotl.export.manifest import FORMAT_PATHS, FORMATS, MANIFEST
from autotl.export.tf_formats import (MODEL_SIGNATURE, OUTPUT, PIXELS_INPUT, PIXELS_SIGNATURE, PREPROCESSOR_DIR,
                                      RAW_SIGNATURE, TEXTS_INPUT)


@dataclass
class Prediction:
    source: str
    label: str
    probabilities: dict[str, float]


def predict(model_dir: str | Path, inputs: Sequence[Any], model_format: str = "keras",
            registry: Registry | None = None, batch_size: int = 32) -> list[Prediction]:
    """Predict `inputs` (image paths or arrays; strings for text) with an exported model."""
    loaded = LoadedModel(model_dir, model_format, registry)
    return loaded.predict(inputs, batch_size=batch_size)


class LoadedModel:
    """An exported model with its preprocessor, ready to predict raw inputs."""

    def __init__(self, model_dir: str | Path, model_format: str = "keras", registry: Registry | None = None):
        from autotl.backbones.registry import load_registry

        self.directory = Path(model_dir).expanduser()
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise AutotlError(f"{self.directory} is not an autotl export (no {MANIFEST})")
        self.manifest = json.loads(manifest_path.read_text())
        self.labels = self.manifest["labels"]
        registry = registry or load_registry()
        self.backbone = registry.get(self.manifest["backbone"])
        self.preprocessor = self.backbone.load_preprocessor(self.directory / PREPROCESSOR_DIR,
                                                            self.manifest["preprocessing"])
        self.format = model_format
        self._forward = self._load_forward(model_format)

    def _load_forward(self, model_format: str):
        """A function from a batch to probabilities; sets `_takes`: "model" (what model.keras takes),
        "pixels" (uint8 images of any size, resized inside) or "texts" (strings, tokenized inside)."""
        self._takes = "model"
        if model_format not in FORMATS:
            raise UsageError(f"unknown model format {model_format!r} (use {', '.join(FORMATS)})")
        path = self.directory / FORMAT_PATHS[model_format]
        if not path.exists():
            raise AutotlError(f"{self.directory} holds no {FORMAT_PATHS[model_format]}"
                              f"{'/' if model_format == 'savedmodel' else ''}; export with --format {model_format}")
        image = self.manifest["modality"] == "image"
        if model_format == "keras":
            import keras

            try:
                model = keras.saving.load_model(path, compile=False, safe_mode=True)  # no code from the file
            except ValueError as exc:
                if "safe_mode" in str(exc):
                    raise AutotlError(f"refusing to load {self.directory}: its model holds Python code (e.g. a "
                                      "Lambda layer), which Keras safe mode does not run") from None
                raise
            return lambda x: np.asarray(model.predict_on_batch(x))
        if model_format == "savedmodel":
            return self._load_saved_model(path, image)
        if model_format == "onnx":
            return self._load_onnx(path, image)
        return self._load_tflite(path, image)

    def _load_saved_model(self, path: Path, image: bool):
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401 - registers the tokenizer ops a text SavedModel may hold
        except ImportError:
            pass
        self._saved_model = tf.saved_model.load(str(path))  # keep it alive: its variables die with it
        signatures = self._saved_model.signatures
        if image and PIXELS_SIGNATURE in signatures:
            self._takes = "pixels"
            function = signatures[PIXELS_SIGNATURE]
            return lambda x: function(**{PIXELS_INPUT: tf.constant(x, tf.uint8)})[OUTPUT].numpy()
        raw = signatures.get(RAW_SIGNATURE)
        if not image and raw is not None and TEXTS_INPUT in raw.structured_input_signature[1]:
            self._takes = "texts"
            return lambda x: raw(**{TEXTS_INPUT: tf.constant(x, tf.string)})[OUTPUT].numpy()
        return lambda x: np.asarray(getattr(self._saved_model, MODEL_SIGNATURE)(x))  # a version-1 export: `serve` only

    def _load_onnx(self, path: Path, image: bool):
        try:
            import onnxruntime
        except ImportError:
            raise AutotlError("running the ONNX model needs onnxruntime: pip install onnxruntime") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {i.name: _ONNX_TYPES.get(i.type, "float32") for i in session.get_inputs()}
        if image and list(inputs) == [PIXELS_INPUT]:
            self._takes = "pixels"
        return lambda x: session.run([OUTPUT], _feed(x, inputs))[0]

    def _load_tflite(self, path: Path, image: bool):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own copy of the interpreter
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        from autotl.quiet import native_stderr_held

        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner(RAW_SIGNATURE)
        details = runner.get_input_details()
        inputs = {name: np.dtype(d["dtype"]).name for name, d in details.items()}
        if image and list(inputs) == [PIXELS_INPUT]:
            self._takes = "pixels"
        self._interpreter = interpreter

        def run(x):
            with native_stderr_held():  # the runtime's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                return runner(**_feed(x, inputs))[OUTPUT]

        return run

    def predict(self, inputs: Sequence[Any], batch_size: int = 32) -> list[Prediction]:
        probabilities = self.predict_proba(inputs, batch_size)
        sources = [str(x) if isinstance(x, (str, Path)) else f"input {i}" for i, x in enumerate(inputs)]
        return [Prediction(source, *self.labelled(row)) for source, row in zip(sources, probabilities)]

    def labelled(self, probabilities: np.ndarray) -> tuple[str, dict[str, float]]:
        """One example's label (the most probable class) and every class's probability, by name."""
        return (self.labels[int(np.argmax(probabilities))],
                {label: float(p) for label, p in zip(self.labels, probabilities)})

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Class probabilities of raw `inputs`, read and run `batch_size` at a time (never all at once)."""
        if not len(inputs):
            raise UsageError("nothing to predict: give at least one input")
        return np.concatenate([self.probabilities([self.prepare(x) for x in inputs[start:start + batch_size]],
                                                  batch_size)
                               for start in range(0, len(inputs), batch_size)])

    def prepare(self, value: Any) -> Any:
        """One raw input as this model's forward pass takes it: an image read at the export's size (or decoded at
        its own, for the formats that resize inside), or a text as a string. Raises
        `autotl.data.UnreadableImageError` for an image that cannot be read."""
        from autotl import data as data_module

        if self.manifest["modality"] != "image":
            return str(value)
        if self._takes == "pixels":
            return data_module.decode_image(value)
        return data_module.read_image(value, tuple(self.manifest["preprocessing"]["image_size"]))

    def probabilities(self, prepared: list[Any], batch_size: int = 32) -> np.ndarray:
        """Class probabilities (examples x classes) of inputs made ready by `prepare`, in their order."""
        if self._takes == "pixels":  # decoded at their own size: the model resizes them
            return self._by_size(prepared, batch_size)
        outputs = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            if self._takes == "texts":
                outputs.append(self._forward(np.array(chunk, dtype=object)))
            else:
                outputs.append(self._forward(_as_tensors(self.preprocessor(chunk))))
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.labels)), dtype=np.float32)

    def _by_size(self, images: list[np.ndarray], batch_size: int) -> np.ndarray:
        """Run images of one size together (a batch is one array), in their order."""
        out = np.zeros((len(images), len(self.labels)), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                out[chunk] = self._forward(np.stack([images[i] for i in chunk]))
        return out


_ONNX_TYPES = {"tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(float)": "float32", "tensor(string)": "object"}


def _feed(batch, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    """A batch (an array, or a dict of arrays by input name) as the named, typed inputs of a runtime."""
    if isinstance(batch, dict):
        return {name: np.asarray(batch[name], dtype=dtype) for name, dtype in inputs.items()}
    (name, dtype), = inputs.items()
    return {name: np.asarray(batch, dtype=dtype)}


def _as_tensors(batch):
    if isinstance(batch, dict):
        return {k: np.asarray(v) for k, v in batch.items()}
    return np.asarray(batch, dtype="float32")
