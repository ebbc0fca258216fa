"""Exports that run without autotl: TensorFlow SavedModel, ONNX and TFLite (LiteRT), from a `.keras` file.

Each takes raw inputs as far as its format can hold the preprocessing:

* images: the exported model resizes and normalises itself. The SavedModel's ``serving_default``
  signature takes encoded image files (``tf.string``, shape ``(N,)``); its ``pixels`` signature,
  the ONNX model and the TFLite model take uint8 RGB pixels ``(N, H, W, 3)`` of any H and W (one
  size per call). The resize inside reproduces Pillow's BILINEAR resize bit for bit (integer
  arithmetic carried exactly in float32, see `autotl.export.image_ops`), which is what autotl's
  reader applies (`autotl.data.read_image`): an export predicts what ``autotl predict`` does.
* text: the SavedModel's ``serving_default`` takes strings where the plugin's preprocessor has
  TensorFlow graph code (`autotl.backbones.Preprocessor.graph_function`; BERT's WordPiece
  tokenizer, whose ops are tensorflow-text's: ``import tensorflow_text`` before loading it).
  ONNX and TFLite take the tokenizer's outputs: their runtimes have no tokenizer ops.

The SavedModel keeps its ``serve`` signature, which takes what the `.keras` model takes.

Keras writes these only on its TensorFlow backend. A `.keras` file is backend-independent, so on
torch or JAX the export reloads it in a child process running the TensorFlow backend::

    python -m autotl.export.tf_formats MODEL.keras OUT_DIR --format savedmodel [--format onnx ...] \\
        --backbone NAME --preprocessing JSON [--plugin FILE ...]
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence


from autotl.errors import AutotlError
from autotl.insight.bar import ProgressLine
from autotl.quiet import native_stderr_held
from autotl.workarounds import frozen_for_onnx, keras_input_signature
from autotl.export.image_ops import decode_image, pil_resize, pillow_vertical_first

SAVED_MODEL_DIR = "saved_model"
ONNX_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
PREPROCESSOR_DIR = "preprocessor"
TF_FORMATS = ("savedmodel", "onnx", "tflite")

RAW_SIGNATURE = "serving_default"  # encoded image files, or strings (text with graph preprocessing)
PIXELS_SIGNATURE = "pixels"  # uint8 pixels of any size (images)
MODEL_SIGNATURE = "serve"  # what the .keras model takes
IMAGES_INPUT = "images"
TEXTS_INPUT = "texts"
PIXELS_INPUT = "pixels"
OUTPUT = "probabilities"
# The formats each mode quantizes; the others stay float32. onnxruntime's float16 conversion writes an ONNX
# graph that onnxruntime itself refuses to load for autotl's exports ("Graph output ... does not exist"), so
# float16 leaves the ONNX model as it is.
QUANTIZED_FORMATS = {"float16": ("tflite",), "int8": ("tflite", "onnx")}
ONNX_OPSET = 17


class FormatFailed(AutotlError):
    """One format's export failed (its converter's error, in one line)."""

    def __init__(self, fmt: str, message: str):
        super().__init__(message)
        self.format = fmt


def export_formats(keras_file: Path, out_dir: Path, formats: Sequence[str], preprocessing: dict[str, Any],
                   preprocessor, backbone_name: str, plugin_files: Sequence[str], model=None,
                   quantize: str | None = None) -> None:
    """Write each of `formats` (of `TF_FORMATS`) of the model in `keras_file` into `out_dir`.

    `preprocessor` is the search's (`preprocessing` is its config); `model`, when given, is
    `keras_file` already loaded. `quantize` (``float16``, ``int8``) quantizes the TFLite and ONNX models
    (`autotl.export.quantization`). On a backend other than TensorFlow a child process does it.
    """
    import keras

    from autotl.export.keras_model import float32_model

    formats = [f for f in TF_FORMATS if f in formats]
    if not formats:
        return
    if keras.backend.backend() == "tensorflow":
        model = model if model is not None else keras.saving.load_model(keras_file, compile=False)
        write_formats(float32_model(model), Path(out_dir), formats, preprocessing, preprocessor, quantize)
        return
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, "-m", "autotl.export.tf_formats", str(keras_file), str(out_dir),
            "--backbone", backbone_name, "--preprocessing", json.dumps(preprocessing)]
    for fmt in formats:
        args += ["--format", fmt]
    for plugin in plugin_files:
        args += ["--plugin", str(plugin)]
    if quantize is not None:
        args += ["--quantize", quantize]
    with ProgressLine(f"exporting {', '.join(formats)} (in a TensorFlow process)"):
        result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        raise AutotlError(f"{'/'.join(formats)} export (TensorFlow backend) failed: {last}")


def write_formats(model, out_dir: Path, formats: Sequence[str], preprocessing: dict[str, Any], preprocessor,
                  quantize: str | None = None) -> None:
    """On the TensorFlow backend: write `formats` of `model` into `out_dir` (TFLite and ONNX quantized by
    `quantize`)."""
    graph = _Graph(model, preprocessing, preprocessor)

    def onnx(scratch: Path) -> None:
        graph.write_onnx(out_dir / ONNX_FILE)
        quantize_onnx(out_dir / ONNX_FILE, quantize)

    writers = {"savedmodel": lambda scratch: graph.write_saved_model(out_dir / SAVED_MODEL_DIR),
               "onnx": onnx,
               "tflite": lambda scratch: graph.write_tflite(out_dir / TFLITE_FILE, scratch, quantize)}
    with tempfile.TemporaryDirectory() as scratch:
        for fmt in (f for f in TF_FORMATS if f in formats):
            try:
                with ProgressLine(f"exporting {fmt}"), native_stderr_held():  # the line is drawn before fd 2 is held
                    writers[fmt](Path(scratch))
            except Exception as exc:  # a converter's error, often pages long: its first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise FormatFailed(fmt, f"the {fmt} export failed: {type(exc).__name__}: {first[:300]}") from exc


def takes_pixels(preprocessing: dict[str, Any]) -> bool:
    """Whether exports of a model with this preprocessing resize and normalise images themselves."""
    return preprocessing.get("type") == "image" and preprocessing.get("resize") == "bilinear"


# --------------------------------------------------------------------------- the graphs


class _Graph:
    """The TensorFlow functions the exports are made of."""

    def __init__(self, model, preprocessing: dict[str, Any], preprocessor):
        import tensorflow as tf

        self.model = model
        self.preprocessing = preprocessing
        self.pixels = takes_pixels(preprocessing)
        self.packer = None if self.pixels else preprocessor.graph_function()
        inputs = model.input
        self.input_names = list(inputs) if isinstance(inputs, dict) else None
        self.input_specs = ({name: tf.TensorSpec(t.shape, t.dtype, name=name) for name, t in inputs.items()}
                            if isinstance(inputs, dict) else None)
        if self.pixels:
            self.image_size = tuple(int(v) for v in preprocessing["image_size"])
            self.vertical_first = pillow_vertical_first()

    # -- the functions -------------------------------------------------------------------
    def _probabilities(self, inputs):
        import tensorflow as tf

        return {OUTPUT: tf.cast(self.model(inputs, training=False), tf.float32)}

    def pixels_fn(self, pixels):
        return self._probabilities(pil_resize(pixels, self.image_size, self.vertical_first))

    def images_fn(self, images):
        import tensorflow as tf

        def one(contents):
            pixels = decode_image(contents)
            return pil_resize(pixels[None], self.image_size, self.vertical_first)[0]

        batch = tf.map_fn(one, images, fn_output_signature=tf.TensorSpec((*self.image_size, 3), tf.float32))
        return self._probabilities(batch)

    def texts_fn(self, texts):
        import tensorflow as tf

        packed = self.packer(texts)
        return self._probabilities({name: tf.cast(packed[name], self.input_specs[name].dtype)
                                    for name in self.input_names})

    def tokens_fn(self, *tensors):
        return self._probabilities(dict(zip(self.input_names, tensors)))

    def portable(self):
        """(function, input signature) of what ONNX and TFLite hold: pixels, or the model's own inputs."""
        import tensorflow as tf

        if self.pixels:
            return self.pixels_fn, [tf.TensorSpec((None, None, None, 3), tf.uint8, name=PIXELS_INPUT)]
        if self.input_names is not None:
            return self.tokens_fn, [self.input_specs[name] for name in self.input_names]
        spec = self.model.input
        return self._probabilities, [tf.TensorSpec(spec.shape, spec.dtype, name="inputs")]

    # -- the formats ---------------------------------------------------------------------
    def write_saved_model(self, path: Path) -> None:
        import tensorflow as tf
        from keras.export import ExportArchive

        archive = ExportArchive()
        archive.track_and_add_endpoint(MODEL_SIGNATURE, self.model, keras_input_signature(self.model))
        if self.pixels:
            archive.add_endpoint(RAW_SIGNATURE, _named(self.images_fn, IMAGES_INPUT),
                                 [tf.TensorSpec((None,), tf.string, name=IMAGES_INPUT)])
            archive.add_endpoint(PIXELS_SIGNATURE, _named(self.pixels_fn, PIXELS_INPUT),
                                 [tf.TensorSpec((None, None, None, 3), tf.uint8, name=PIXELS_INPUT)])
        elif self.packer is not None and self.input_names is not None:
            if not getattr(self.packer, "built", True):
                self.packer(tf.constant(["built by a first call"]))  # Keras layers are tracked once built
            archive.track(self.packer)
            archive.add_endpoint(RAW_SIGNATURE, _named(self.texts_fn, TEXTS_INPUT),
                                 [tf.TensorSpec((None,), tf.string, name=TEXTS_INPUT)])
        archive.write_out(str(path), verbose=False)

    def write_onnx(self, path: Path) -> None:
        """Convert the portable function, frozen, with tf2onnx; write it only if ONNX's checker accepts it.

        Freezing first turns what the function captures into constants: tf2onnx's own
        `from_function` freezes variables but leaves captured tensors (a Keras
        ``Normalization`` layer's mean and variance, in EfficientNet) as extra graph inputs.
        The checker refuses ops no ONNX runtime has (a nested XLA function of a grouped
        convolution, TensorFlow's ``Erfc``), which tf2onnx writes as they are.
        """
        import onnx
        import tensorflow as tf
        import tf2onnx

        function, signature = self.portable()
        frozen = frozen_for_onnx(
            tf.function(function, input_signature=signature, autograph=False).get_concrete_function())
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
            output_names=[t.name for t in frozen.outputs], opset=ONNX_OPSET)
        _rename_onnx_io(proto, [spec.name for spec in signature], [OUTPUT])
        onnx.checker.check_model(proto)
        path.write_bytes(proto.SerializeToString())

    def write_tflite(self, path: Path, scratch: Path, quantize: str | None = None) -> None:
        import tensorflow as tf
        from keras.export import ExportArchive


        # Through a SavedModel written by Keras' ExportArchive, as Keras' own LiteRT export does
        # (a concrete function of a Keras model converts with its variables left unset).
        function, signature = self.portable()
        archive = ExportArchive()
        archive.track(self.model)
        archive.add_endpoint(RAW_SIGNATURE, _named(function, *[spec.name for spec in signature]), signature)
        saved = scratch / "tflite_source"
        archive.write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=[RAW_SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: any LiteRT runtime
        configure_tflite(converter, quantize)
        path.write_bytes(converter.convert())


def configure_tflite(converter, mode: str | None) -> None:
    """Post-training quantization of a `tf.lite.TFLiteConverter`: float16 weights, or int8 weights with
    activations quantized at run time (dynamic range).

    Full integer quantization, with activations calibrated on a representative sample of the training data,
    aborts the process inside TensorFlow 2.21's converter on the graphs autotl exports (seen on the tiny CNN:
    ``fully_quantize: 0, inference_type: 6`` then SIGABRT), so int8 here is dynamic range, which needs no sample.
    """
    import tensorflow as tf

    if mode is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]


def quantize_onnx(path: Path, mode: str | None) -> None:
    """Rewrite the ONNX model at `path` with its weights in int8 (onnxruntime's dynamic quantization); other
    modes leave it as it is (`QUANTIZED_FORMATS`)."""
    if mode is None or "onnx" not in QUANTIZED_FORMATS[mode]:
        return
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise AutotlError("quantizing the ONNX export needs onnxruntime: pip install onnxruntime") from None
    quantized = path.with_name(path.stem + ".int8" + path.suffix)
    quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
    quantized.replace(path)


def _named(function, *names: str):
    """`function` under Python parameter names that the signature shows (`images`, `token_ids`...)."""
    namespace: dict[str, Any] = {"function": function}
    parameters = ", ".join(n if n.isidentifier() and not keyword.iskeyword(n) else f"input_{i}"
                           for i, n in enumerate(names))
    exec(f"def endpoint({parameters}):\n    return function({parameters})\n", namespace)  # noqa: S102 - fixed template
    return namespace["endpoint"]


def _rename_onnx_io(proto, inputs: list[str], outputs: list[str]) -> None:
    """Name the ONNX graph's inputs `inputs` (tf2onnx calls them ``name:0``) and its outputs `outputs`."""
    renames = {}
    for value in proto.graph.input:
        base = value.name.split(":")[0]
        if base in inputs:
            renames[value.name] = base
    if len(proto.graph.output) != len(outputs):
        raise AutotlError(f"the ONNX graph has {len(proto.graph.output)} outputs, expected {len(outputs)}")
    for value, name in zip(proto.graph.output, outputs):
        renames[value.name] = name
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = renames.get(value.name, value.name)

    def rename(graph):
        for node in graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
            for attribute in node.attribute:
                if attribute.g.node:
                    rename(attribute.g)
                for sub in attribute.graphs:
                    rename(sub)

    rename(proto.graph)
    names = {value.name for value in proto.graph.input}
    if names != set(inputs):
        raise AutotlError(f"the ONNX graph takes {sorted(names)}, not {sorted(inputs)}")


# --------------------------------------------------------------------------- child process


def _export_here(keras_file: Path, out_dir: Path, formats: list[str], backbone_name: str,
                 preprocessing: dict[str, Any], plugin_files: list[str], quantize: str | None = None) -> None:
    import keras

    from autotl.backbones import layers  # noqa: F401 - registers autotl's serialisable layers
    from autotl.backbones.registry import load_registry
    from autotl.export.keras_model import float32_model

    registry = load_registry(plugin_files)  # imports plugin modules, registering their custom layers
    preprocessor = registry.get(backbone_name).load_preprocessor(out_dir / PREPROCESSOR_DIR, preprocessing)
    model = float32_model(keras.saving.load_model(keras_file, compile=False))
    write_formats(model, out_dir, formats, preprocessing, preprocessor, quantize)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keras_file", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--format", dest="formats", action="append", choices=TF_FORMATS, required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--preprocessing", required=True, help="the preprocessor's config, as JSON")
    parser.add_argument("--plugin", action="append", default=[])
    parser.add_argument("--quantize", choices=("float16", "int8"))
    args = parser.parse_args(argv)
    _export_here(args.keras_file, args.out_dir, args.formats, args.backbone, json.loads(args.preprocessing),
                 args.plugin, args.quantize)


if __name__ == "__main__":
    main()
