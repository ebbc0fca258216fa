"""Self-contained image exports: every format reloads in a fresh process with no autotl, takes raw
inputs (image files, or pixels of any size), and predicts what the Keras model predicts on 20 real
MNIST digits, within a stated tolerance."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from autotl import api

from autotl.backbones import layers  # noqa: F401 - layers: the reference loads the checkpoint, which holds autotl's
from autotl.data import read_image
from autotl.store import Store

from conftest import REPO, TINY_PLUGIN, run_cli

ALL_FORMATS = ("keras", "savedmodel", "onnx", "tflite")
# Largest absolute difference of a class probability from the Keras model's, per format
# (measured on these digits: about 1e-7 or less for each; see README, Exports).
TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "onnx": 1e-4, "tflite": 1e-4}
IMAGE_SIZE = (16, 16)
# The digits are 28x28; as arrays they are also given at other sizes: up and down, taller than
# wide (Pillow then resizes vertically first), at the model's size, and far larger.
ARRAY_SIZES = [(28, 28), (16, 16), (40, 52), (17, 23), (120, 20), (20, 90), (9, 11), (333, 301), (64, 64),
               (31, 17)] * 2
RELOAD = REPO / "tests" / "reload_export.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("formats")
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(
        data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)], image_size=IMAGE_SIZE[0],
        max_trials=1, epochs=3, finetune_epochs=1, batch_size=16, seed=4, name="formats", workdir=str(root / "runs"))
    result = api.search(config, store)
    out = root / "export"
    run_cli("export", "formats", "--out", out, *[arg for fmt in ALL_FORMATS for arg in ("--format", fmt)],
            "--store", store.url, "--plugin", TINY_PLUGIN, check=True)
    checkpoint = [a.path for a in store.artifacts(result.search.id, kind="checkpoint") if a.trial_id == result.best.id]
    return root, out, Path(checkpoint[0])


@pytest.fixture(scope="module")
def digits(mnist_dir, exported):
    """20 real digits (2 per class): their PNG files, the same digits as arrays of other sizes, and the
    Keras model's probabilities on each (the search's model, read by autotl's reader)."""
    root, _, checkpoint = exported
    files = [path for label in range(10) for path in sorted((mnist_dir / str(label)).glob("*.png"))[:2]]
    arrays = [np.asarray(Image.open(path).convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR))
              for path, size in zip(files, ARRAY_SIZES)]
    model = keras.saving.load_model(checkpoint, compile=False)
    file_pixels = np.stack([read_image(path, IMAGE_SIZE) for path in files]).astype("float32")
    array_pixels = np.stack([read_image(a, IMAGE_SIZE) for a in arrays]).astype("float32")
    np.savez(root / "arrays.npz", **{str(i): a for i, a in enumerate(arrays)})
    np.savez(root / "model_inputs.npz", x=file_pixels)
    return {"files": [str(p) for p in files], "arrays": str(root / "arrays.npz"),
            "model_inputs": str(root / "model_inputs.npz"),
            "expected": {"files": model.predict(file_pixels, verbose=0),
                         "arrays": model.predict(array_pixels, verbose=0),
                         "model_inputs": model.predict(file_pixels, verbose=0)}}


def reload_without_autotl(fmt: str, export_dir: Path, spec: dict, work: Path) -> tuple[dict, list[str]]:
    """Run `fmt` of the export in a fresh Python process where importing autotl fails."""
    inputs, out = work / f"{fmt}_inputs.json", work / f"{fmt}_out.npz"
    inputs.write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, str(RELOAD), fmt, str(export_dir), str(inputs), str(out)],
                            capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as stored:
        return {name: stored[name] for name in stored.files}, json.loads(result.stdout.strip().splitlines()[-1])


def image_inputs(files: list, image_size: tuple[int, int], work: Path) -> tuple[np.ndarray, dict]:
    """The model inputs of image `files` (float pixels at `image_size`), and what each format takes of them
    for `reload_without_autotl`: the files themselves, their decoded arrays or those pixels."""
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in files]
    np.savez(work / "arrays.npz", **{str(i): a for i, a in enumerate(arrays)})
    pixels = np.stack([read_image(path, image_size) for path in files]).astype("float32")
    np.savez(work / "model_inputs.npz", x=pixels)
    takes = {"keras": {"model_inputs": str(work / "model_inputs.npz")}, "savedmodel": {"files": list(files)},
             "onnx": {"arrays": str(work / "arrays.npz")}, "tflite": {"arrays": str(work / "arrays.npz")}}
    return pixels, takes


def assert_reloads_like(fmt: str, export_dir: Path, takes: dict, expected: np.ndarray, work: Path, what: str) -> None:
    """`fmt` of the export, run without autotl on what it `takes`, gives `expected` within the format's tolerance."""
    results, imported = reload_without_autotl(fmt, export_dir, takes[fmt], work)
    assert "autotl" not in imported
    for name in takes[fmt]:
        difference = float(np.abs(results[name] - expected).max())
        print(f"{fmt} {name}: max abs difference from {what} {difference:.3g}")
        assert difference <= TOLERANCE[fmt]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_each_format_predicts_like_the_keras_model_without_autotl(exported, digits, fmt, tmp_path):
    _, out, _ = exported
    takes = {"keras": ["model_inputs"], "savedmodel": ["files", "arrays"], "onnx": ["arrays"],
             "tflite": ["arrays"]}[fmt]
    spec = {name: digits[name] for name in takes}
    results, imported = reload_without_autotl(fmt, out, spec, tmp_path)
    assert "autotl" not in imported and "autotl_plugins" not in imported
    if fmt in ("onnx", "tflite"):
        assert "tensorflow" not in imported and "keras" not in imported  # numpy and the format's runtime only
    for name in takes:
        expected = digits["expected"][name]
        assert results[name].shape == expected.shape == (20, 10)
        difference = float(np.abs(results[name] - expected).max())
        print(f"{fmt} {name}: max abs probability difference {difference:.3g} (tolerance {TOLERANCE[fmt]})")
        assert difference <= TOLERANCE[fmt]
        assert np.array_equal(results[name].argmax(axis=1), expected.argmax(axis=1))


def test_predict_with_tflite_keeps_the_runtimes_info_lines_off_stderr(exported, digits):
    """Issue 29, 9: `autotl predict --format tflite` printed TFLite's "INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU." on stderr, a line that reads as a problem and is none."""
    _, out, _ = exported
    result = run_cli("predict", out, *digits["files"][:2], "--format", "tflite", "--plugin", TINY_PLUGIN, check=True)
    assert len(result.stdout.strip().splitlines()) >= 2
    assert result.stderr.strip() == ""


def test_predict_takes_a_folder_of_images(exported, mnist_dir, tmp_path):
    """Issue 29, 9: `autotl predict DIR` said `image file not found` for a folder."""
    _, out, _ = exported
    folder = sorted((mnist_dir / "3").glob("*.png"))
    result = run_cli("predict", out, mnist_dir / "3", folder[0], "--json", "--plugin", TINY_PLUGIN, check=True)
    sources = [p["source"] for p in json.loads(result.stdout)]
    assert sources == [str(path) for path in folder] + [str(folder[0])]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.png").write_bytes(b"")  # hidden files are not the user's images
    empty = run_cli("predict", out, tmp_path / "empty", "--plugin", TINY_PLUGIN)
    assert empty.returncode == 1 and empty.stderr.strip().splitlines() == [
        f"Error: no image files in folder {tmp_path / 'empty'} (looked for .bmp .gif .jpeg .jpg .png .tif .tiff .webp)"]


def _expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s definition, written out once more: bins of the top probability, weighted |accuracy - confidence|."""
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        rows = [i for i, p in enumerate(probabilities.max(axis=1)) if low < p <= high]
        if rows:
            accuracy = np.mean([probabilities[i].argmax() == truth[i] for i in rows])
            total += len(rows) / len(truth) * abs(accuracy - np.mean([probabilities[i].max() for i in rows]))
    return total


def test_evaluate_scores_an_export_on_labelled_folders_as_scikit_learn_does(exported, mnist_dir, tmp_path):
    """Issue 16, 1: `autotl evaluate MODEL_DIR DATA`; each figure against scikit-learn on the same probabilities."""
    from sklearn import metrics as sk

    from autotl.backbones.registry import load_registry
    from autotl.data import load_dataset
    from autotl.runtime.loaded import LoadedModel

    _, out, _ = exported
    shown = json.loads(run_cli("evaluate", out, mnist_dir, "--json", "--plugin", TINY_PLUGIN, check=True).stdout)
    model = LoadedModel(out, "keras", load_registry([str(TINY_PLUGIN)]))
    dataset = load_dataset(mnist_dir, "image", image_size=IMAGE_SIZE)
    probabilities = model.predict_proba(list(dataset.examples))
    truth = np.array([model.labels.index(dataset.class_names[i]) for i in dataset.labels])
    predicted = probabilities.argmax(axis=1)
    assert (shown["examples"], shown["skipped"], shown["labels"]) == (120, 0, model.labels)
    assert shown["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert shown["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(truth, predicted))
    assert shown["macro_f1"] == pytest.approx(sk.f1_score(truth, predicted, average="macro", zero_division=0))
    assert shown["log_loss"] == pytest.approx(sk.log_loss(truth, probabilities, labels=range(10)), rel=1e-4)
    assert shown["confusion_matrix"] == sk.confusion_matrix(truth, predicted, labels=range(10)).tolist()
    seen = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = sk.precision_recall_fscore_support(truth, predicted, labels=seen, zero_division=0)
    for index, c in enumerate(seen):
        assert shown["per_class"][model.labels[c]] == pytest.approx(
            {"precision": precision[index], "recall": recall[index], "f1": f1[index], "support": support[index]})
    assert shown["expected_calibration_error"] == pytest.approx(_expected_calibration_error(probabilities, truth))
    table = run_cli("evaluate", out, mnist_dir, "--plugin", TINY_PLUGIN, check=True).stdout
    assert f"accuracy {shown['accuracy']:.4f}" in table and "confusion matrix (rows: true class" in table
    (tmp_path / "odd" / "zebra").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "odd" / "zebra" / "a.png")
    (tmp_path / "odd" / "3").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "odd" / "3" / "b.png")
    unknown = run_cli("evaluate", out, tmp_path / "odd", "--plugin", TINY_PLUGIN)
    assert unknown.returncode == 1 and unknown.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'odd'} has classes the model does not know: 'zebra' (the model's: "
        + ", ".join(f"'{d}'" for d in range(10)) + ")"]


def test_evaluate_records_the_score_in_the_searchs_store_and_the_report_shows_the_gap(exported, mnist_dir, tmp_path):
    """Issue 16, 1: an evaluation row linked to the search and the export's checksum; `autotl report` shows it
    beside the validation figure. Without the search's store at hand, the evaluation still prints."""
    import hashlib
    import shutil

    root, out, _ = exported
    manifest = json.loads((out / "autotl.json").read_text())
    result = run_cli("evaluate", out, mnist_dir, "--json", "--out", tmp_path / "scored", "--plugin", TINY_PLUGIN,
                     check=True)
    shown = json.loads(result.stdout)
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    search = store.get_search("formats")
    row = store.evaluations(search.id)[-1]
    validation = manifest["objective"]["value"]
    assert result.stderr.strip().splitlines() == [
        f"wrote {tmp_path / 'scored' / 'predictions.csv'}, {tmp_path / 'scored' / 'confusion_matrix.png'}",
        f"recorded as evaluation {row.id} of search 'formats' in {store.display_url} (validation accuracy "
        f"{validation:.4f}, test {shown['accuracy']:.4f}: gap {validation - shown['accuracy']:+.4f})"]
    with open(tmp_path / "scored" / "predictions.csv", newline="") as handle:
        examples = list(csv.DictReader(handle))
    assert len(examples) == 120 and set(examples[0]) == {"source", "true", "predicted", "correct", "p_true",
                                                          "p_predicted"}
    assert np.mean([int(e["correct"]) for e in examples]) == pytest.approx(shown["accuracy"])
    assert all(e["true"] == Path(e["source"]).parent.name for e in examples)
    assert Image.open(tmp_path / "scored" / "confusion_matrix.png").size[0] > 200
    assert (row.accuracy, row.examples, row.model_format, row.trial_number) == (
        shown["accuracy"], 120, "keras", manifest["search"]["trial"])
    assert row.export_sha256 == hashlib.sha256((out / "model.keras").read_bytes()).hexdigest()
    assert row.metrics["confusion_matrix"] == shown["confusion_matrix"]
    report = run_cli("report", "formats", "--out", tmp_path / "report", "--store", store.url, check=True)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Evaluations on labelled data" in page and f"{validation - shown['accuracy']:+.4f}" in page, report.stderr
    elsewhere = run_cli("evaluate", out, mnist_dir, "--store", tmp_path / "other.db", "--plugin", TINY_PLUGIN,
                        check=True)
    assert elsewhere.stderr.strip() == (f"not recorded: sqlite:///{tmp_path / 'other.db'} holds no search 'formats' "
                                        "trained on this export's data")
    moved = shutil.copytree(out, tmp_path / "moved")
    (moved / "autotl.json").write_text(json.dumps({**manifest, "search": {**manifest["search"],
                                                                         "store": "sqlite:////gone/autotl.db"}}))
    away = run_cli("evaluate", moved, mnist_dir, "--plugin", TINY_PLUGIN, check=True)
    assert away.stderr.strip() == "not recorded: the search's store is not at hand here (give it with --store)"
    assert store.evaluations(search.id)[-1].id == row.id  # neither added a row


def _on_a_terminal(args: list) -> str:
    """What `autotl ARGS` writes to its stderr when that is a pseudo-terminal."""
    import os
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "autotl", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=follower, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_export_shows_each_format_on_a_terminal_and_nothing_when_piped(exported, tmp_path):
    """Issue 29, 4: 55-67 s of silent export. On a terminal each format's line is drawn, then cleared."""
    root, _, _ = exported
    args = ["export", "formats", "--format", "keras", "--format", "savedmodel", "--store",
            f"sqlite:///{root / 'autotl.db'}", "--plugin", TINY_PLUGIN]
    shown = _on_a_terminal([*args, "--out", tmp_path / "tty"])
    assert "\rexporting keras... 0s\x1b[K" in shown and "\rexporting savedmodel... 0s\x1b[K" in shown
    assert shown.count("\r\x1b[K") == 2  # each cleared
    piped = run_cli(*args, "--out", tmp_path / "piped", check=True)
    assert "exporting" not in piped.stderr and "\r" not in piped.stderr


def test_saved_model_decodes_jpeg_gif_bmp_and_transparency_as_autotl_reads_them(exported, digits, tmp_path):
    """The serving_default signature reads the usual encodings of the same digits as autotl does."""
    _, out, _ = exported
    files = []
    for index, path in enumerate(digits["files"][:10]):
        image = Image.open(path).convert("RGB")
        gray = np.asarray(image)[..., 0]
        variants = {
            "jpg": image.resize((45, 38)),
            "gif": image.convert("P"),
            "bmp": image.resize((20, 60)),
            "png": Image.fromarray(np.dstack([np.asarray(image), 64 + gray // 2 - index]).astype(np.uint8), "RGBA"),
        }
        for suffix, variant in variants.items():
            files.append(tmp_path / f"{index}.{suffix}")
            variant.save(files[-1])
    results, _ = reload_without_autotl("savedmodel", out, {"files": [str(f) for f in files]}, tmp_path)
    model = keras.saving.load_model(exported[2], compile=False)
    expected = model.predict(np.stack([read_image(f, IMAGE_SIZE) for f in files]).astype("float32"), verbose=0)
    assert float(np.abs(results["files"] - expected).max()) <= TOLERANCE["savedmodel"]


def test_manifest_lists_every_file_with_its_checksum_and_what_each_format_takes(exported):
    _, out, _ = exported
    manifest = json.loads((out / "autotl.json").read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "autotl.json")
    assert sorted(manifest["files"]) == on_disk
    assert {"model.keras", "model.onnx", "model.tflite", "saved_model/saved_model.pb"} <= set(on_disk)
    import hashlib

    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    inputs = manifest["inputs"]
    assert set(inputs) == set(ALL_FORMATS)
    assert inputs["keras"]["inputs"] == {"image": {"shape": [None, 16, 16, 3], "dtype": "float32"}}
    pixels = {"pixels": {"shape": [None, None, None, 3], "dtype": "uint8"}}
    assert inputs["onnx"]["inputs"] == inputs["tflite"]["inputs"] == pixels
    signatures = inputs["savedmodel"]["signatures"]
    assert signatures["serving_default"]["inputs"] == {"images": {"shape": [None], "dtype": "string"}}
    assert signatures["pixels"]["inputs"] == pixels and "serve" in signatures
    assert all(entry.get("outputs", {}).get("probabilities", {}).get("shape") == [None, 10]
               for entry in [inputs["keras"], inputs["onnx"], inputs["tflite"], signatures["serving_default"]])


@pytest.mark.slow
def test_predict_with_text_on_an_image_model_says_it_takes_images(exported):
    _, out, _ = exported
    result = run_cli("predict", out, "hello", "--text", "--plugin", TINY_PLUGIN)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: the model in {out} takes images, not texts: give image files, without --text"]


def test_an_onnx_export_without_onnx_installed_says_what_to_install(exported, tmp_path):
    """The export checks for tf2onnx before writing anything."""
    root, _, _ = exported
    hide_tf2onnx = "import sys; sys.modules['tf2onnx'] = None; from autotl.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", hide_tf2onnx, "export", "formats", "--out", str(tmp_path / "x"),
                             "--format", "onnx", "--store", f"sqlite:///{root / 'autotl.db'}",
                             "--plugin", str(TINY_PLUGIN)], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "pip install tf2onnx" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_in_model_resize_is_pillows_bilinear_bit_for_bit():
    """The resize inside image exports against Pillow itself, on sizes up, down, tall, wide and unchanged."""
    from autotl.export.image_ops import pil_resize, pillow_vertical_first

    rng = np.random.default_rng(7)
    cases = [((28, 28), (16, 16)), ((16, 16), (16, 16)), ((120, 20), (16, 16)), ((20, 90), (16, 16)),
             ((9, 11), (96, 96)), ((750, 1000), (224, 224)), ((97, 31), (7, 29)), ((1, 1), (5, 3)),
             ((2000, 1500), (16, 16))]
    cases += [((int(rng.integers(1, 300)), int(rng.integers(1, 300))),
               (int(rng.integers(1, 200)), int(rng.integers(1, 200)))) for _ in range(12)]
    for (height, width), size in cases:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))
        got = pil_resize(image[None], size, pillow_vertical_first())[0].numpy()
        assert np.array_equal(got, expected), f"{height}x{width} -> {size}"


def test_in_model_alpha_flattening_is_pillows():
    from autotl.export.image_ops import flatten_alpha

    rgba = np.random.default_rng(3).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 0
    rgba[8:16, :, 3] = 255
    white = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    assert np.array_equal(flatten_alpha(rgba).numpy(), expected)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_model_keras_holds_no_autotl_layer_and_loads_without_autotl(pooling, tmp_path):
    """autotl's pooling layers (and pixel normalisation, in the image tests above) become Keras operations."""
    from autotl.search.hypermodel import pool
    from autotl.export.keras_model import plain_keras_model

    sys.path.insert(0, str(REPO / "tests" / "plugins"))
    from tiny_text import TinyText

    backbone = TinyText()
    preprocessor = backbone.preprocessor("none", {"sequence_length": 12})
    features = backbone.build("none", preprocessor)
    inputs = {name: keras.Input((12,), dtype="int32", name=name) for name in ("token_ids", "padding_mask")}
    x = pool(features(inputs, training=False), pooling, inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classes")(x))
    plain_keras_model(model).save(tmp_path / "model.keras")
    model.save(tmp_path / "checkpoint.keras")
    configs = {}
    for name in ("model", "checkpoint"):
        with zipfile.ZipFile(tmp_path / f"{name}.keras") as archive:
            configs[name] = archive.read("config.json").decode()
    assert "autotl" in configs["checkpoint"] and "autotl" not in configs["model"]
    tokens = preprocessor(["a short one", "a much longer snippet of text", ""])
    np.savez(tmp_path / "tokens.npz", **tokens)
    results, imported = reload_without_autotl("keras", tmp_path, {"model_inputs": str(tmp_path / "tokens.npz")},
                                              tmp_path)
    assert "autotl" not in imported
    np.testing.assert_allclose(results["model_inputs"], model.predict(tokens, verbose=0), atol=1e-6)


def _pixel_model(middle) -> keras.Model:
    """float pixels (N, 8, 8, 3) -> `middle` -> class probabilities; built without a search."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = middle(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


IMAGE_PREPROCESSING = {"type": "image", "image_size": [8, 8], "resize": "bilinear"}


def test_onnx_freezes_constants_the_model_captures(tmp_path):
    """A Keras Normalization layer's mean and variance are tensors its call captures (as in EfficientNet):
    the ONNX file takes `pixels` alone and computes what the model computes."""
    from autotl.export.tf_formats import ONNX_FILE, write_formats
    import onnxruntime

    normalization = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2500.0, 2000.0])
    model = _pixel_model(normalization)
    write_formats(model, tmp_path, ["onnx"], IMAGE_PREPROCESSING, None)
    session = onnxruntime.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype("uint8")
    got = session.run(["probabilities"], {"pixels": pixels})[0]
    np.testing.assert_allclose(got, model.predict(pixels.astype("float32"), verbose=0), atol=1e-5)


def test_onnx_with_an_op_no_runtime_has_fails_in_one_line_and_writes_nothing(tmp_path):
    """TensorFlow's exact GELU uses Erfc, which tf2onnx writes as it is and no ONNX runtime runs."""
    from autotl.errors import AutotlError
    from autotl.export.tf_formats import write_formats

    model = _pixel_model(keras.layers.Activation("gelu"))
    with pytest.raises(AutotlError) as failure:
        write_formats(model, tmp_path, ["onnx"], IMAGE_PREPROCESSING, None)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("the onnx export failed") and "Erfc" in message
    assert not (tmp_path / "model.onnx").exists()


# --------------------------------------------------------------------------- mixed precision (issue 17, 2)


@pytest.fixture(scope="module", params=["mixed_bfloat16", "mixed_float16"])
def mixed_exported(request, tmp_path_factory, mnist_dir):
    """A search trained under a mixed dtype policy, exported in all four formats through the CLI, and
    the reference: the trial's model built anew under float32 with the checkpoint's weights."""
    from autotl.backbones.registry import load_registry
    from autotl.search.hypermodel import TransferHyperModel

    precision = request.param
    root = tmp_path_factory.mktemp(precision)
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(
        data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)], image_size=IMAGE_SIZE[0],
        max_trials=1, epochs=2, finetune_epochs=1, batch_size=16, seed=4, name=precision, precision=precision,
        workdir=str(root / "runs"))
    result = api.search(config, store)
    out = root / "export"
    exported = run_cli("export", precision, "--out", out, *[arg for fmt in ALL_FORMATS for arg in ("--format", fmt)],
                       "--store", store.url, "--plugin", TINY_PLUGIN)
    [checkpoint] = [a.path for a in store.artifacts(result.search.id, kind="checkpoint")
                    if a.trial_id == result.best.id]
    trained = keras.saving.load_model(checkpoint, compile=False)
    assert {layer.dtype_policy.name for layer in trained.layers} >= {precision}, "the search trained mixed"
    backbone = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    hypermodel = TransferHyperModel(backbone, "none", backbone.preprocessor("none", {"image_size": IMAGE_SIZE}),
                                    len(result.search.labels), result.search.config["space"])
    reference = hypermodel.build(hypermodel.hyperparameters(result.best.hyperparameters))
    reference.set_weights(trained.get_weights())
    return {"precision": precision, "export": exported, "out": out, "root": root, "trained": trained,
            "reference": reference}


@pytest.mark.slow
def test_a_mixed_precision_search_exports_every_format(mixed_exported):
    result = mixed_exported["export"]
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" or "Traceback" not in result.stderr
    assert {"model.keras", "model.onnx", "model.tflite", "saved_model"} <= {p.name for p in mixed_exported["out"].iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_a_mixed_precision_export_predicts_like_the_float32_model_without_autotl(mixed_exported, fmt, mnist_dir,
                                                                                 tmp_path):
    """Each format computes in float32 and predicts what the trial's model does under float32, within the
    tolerances of float32 searches' exports (the mixed model itself differs by its half-precision rounding)."""
    assert mixed_exported["export"].returncode == 0, mixed_exported["export"].stderr
    files = [path for label in range(10) for path in sorted((mnist_dir / str(label)).glob("*.png"))[:2]]
    arrays = [np.asarray(Image.open(path).convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR))
              for path, size in zip(files, ARRAY_SIZES)]
    np.savez(tmp_path / "arrays.npz", **{str(i): a for i, a in enumerate(arrays)})
    pixels = {"files": np.stack([read_image(path, IMAGE_SIZE) for path in files]).astype("float32"),
              "arrays": np.stack([read_image(a, IMAGE_SIZE) for a in arrays]).astype("float32")}
    np.savez(tmp_path / "model_inputs.npz", x=pixels["files"])
    pixels["model_inputs"] = pixels["files"]
    takes = {"keras": ["model_inputs"], "savedmodel": ["files", "arrays"], "onnx": ["arrays"],
             "tflite": ["arrays"]}[fmt]
    spec = {"files": [str(p) for p in files], "arrays": str(tmp_path / "arrays.npz"),
            "model_inputs": str(tmp_path / "model_inputs.npz")}
    results, _ = reload_without_autotl(fmt, mixed_exported["out"], {name: spec[name] for name in takes}, tmp_path)
    for name in takes:
        expected = mixed_exported["reference"].predict(pixels[name], verbose=0)
        difference = float(np.abs(results[name] - expected).max())
        half = float(np.abs(mixed_exported["trained"].predict(pixels[name], verbose=0) - expected).max())
        print(f"{mixed_exported['precision']} {fmt} {name}: max abs probability difference {difference:.3g} "
              f"(tolerance {TOLERANCE[fmt]}); the mixed-precision model's own: {half:.3g}")
        assert difference <= TOLERANCE[fmt]
        assert np.array_equal(results[name].argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.slow
def test_a_format_that_fails_leaves_nothing_and_names_it_and_the_others_export_without_it(tmp_path, mnist_dir):
    """One failing format does not leave the others half exported: nothing is written, the one line says
    which failed and how to export the rest, and that command works (issue 17, 2). The tiny backbone with
    exact GELU fails in ONNX only (TensorFlow's Erfc, which no ONNX runtime has)."""
    plugin = tmp_path / "tiny_gelu.py"
    source = TINY_PLUGIN.read_text()
    plugin.write_text(source.replace('name = "tiny_cnn"', 'name = "tiny_gelu"').replace('Activation("relu"',
                                                                                          'Activation("gelu"'))
    assert plugin.read_text() != source
    store = f"sqlite:///{tmp_path / 'autotl.db'}"
    run_cli("search", mnist_dir, "--backbone", "tiny_gelu", "--plugin", plugin, "--image-size", "16",
            "--max-trials", "1", "--epochs", "1", "--name", "gelu", "--store", store, "--workdir", tmp_path / "runs",
            check=True)
    out = tmp_path / "export"
    result = run_cli("export", "gelu", "--out", out, *[arg for fmt in ALL_FORMATS for arg in ("--format", fmt)],
                     "--store", store, "--plugin", plugin)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("Error: the onnx export failed: ") and "Erfc" in lines[0], lines[0]
    assert lines[0].endswith(f"; nothing was written to {out}; the others export without it: "
                             "--format keras --format savedmodel --format tflite"), lines[0]
    assert not out.exists()
    assert not Store(store).artifacts(Store(store).get_search("gelu").id, kind="export")
    run_cli("export", "gelu", "--out", out, "--format", "keras", "--format", "savedmodel", "--format", "tflite",
            "--store", store, "--plugin", plugin, check=True)
    assert {p.name for p in out.iterdir()} == {"model.keras", "saved_model", "model.tflite", "preprocessor",
                                               "autotl.json"}
