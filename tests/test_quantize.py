"""`autotl export --quantize float16|int8` (issue 16, item 3): smaller TFLite and ONNX models, each format
measured on the search's validation split, and an int8 model that loses too much refused.

Real parts: a tiny CNN trained on real digits, exported through the CLI, reloaded by `autotl predict`."""

from __future__ import annotations

import json

import pytest

from autotl import api
from autotl.errors import AutotlError
from autotl.export import exporter
from autotl.export.quantization import check_drop
from autotl.store import Store

from conftest import TINY_PLUGIN, run_cli
from test_export_formats import image_inputs, reload_without_autotl

FORMATS = ("keras", "tflite", "onnx")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("quantize")
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                              image_size=16, max_trials=1, epochs=3, finetune_epochs=0, batch_size=16, seed=0,
                              trials_per_worker=0, name="digits", workdir=str(root / "runs"))
    api.search(config, store)
    return root, store


def export_args(store: Store, out, *extra) -> list:
    formats = [arg for fmt in FORMATS for arg in ("--format", fmt)]
    return ["export", "digits", "--out", out, *formats, *extra, "--store", store.url, "--plugin", TINY_PLUGIN]


@pytest.fixture(scope="module")
def plain(searched, tmp_path_factory):
    """The same search exported without --quantize: what each quantized export is compared with."""
    _, store = searched
    out = tmp_path_factory.mktemp("plain")
    result = run_cli(*export_args(store, out), check=True)
    assert "validation examples:" not in result.stdout
    return out


@pytest.mark.parametrize("mode", ["int8", pytest.param("float16", marks=pytest.mark.slow)])
def test_a_quantized_export_is_smaller_measured_and_still_predicts(searched, plain, mnist_dir, tmp_path, mode):
    root, store = searched
    result = run_cli(*export_args(store, tmp_path / mode, "--quantize", mode), check=True)
    manifest = json.loads((tmp_path / mode / "autotl.json").read_text())
    measured = manifest["quantization"]
    val_examples = store.get_search("digits").config["val_examples"]
    assert (measured["mode"], measured["reference"], measured["validation_examples"]) == (mode, "keras", val_examples)
    assert set(measured["formats"]) == set(FORMATS)
    plain_tflite = (plain / "model.tflite").stat().st_size
    assert measured["formats"]["tflite"]["size_bytes"] < plain_tflite  # onnx's quantize nodes outweigh a tiny model's
    quantized = {"int8": ["tflite", "onnx"], "float16": ["tflite"]}[mode]  # onnx: README, Exports
    assert [fmt for fmt in FORMATS if measured["formats"][fmt]["quantized"]] == quantized
    for fmt in ("tflite", "onnx"):
        figure = measured["formats"][fmt]
        assert figure["size_bytes"] == (tmp_path / mode / f"model.{fmt}").stat().st_size, fmt
        if fmt in quantized:
            assert (tmp_path / mode / f"model.{fmt}").read_bytes() != (plain / f"model.{fmt}").read_bytes()
        assert figure["latency_ms"] > 0 and 0 <= figure["val_accuracy"] <= 1
        assert figure["accuracy_change"] == pytest.approx(
            figure["val_accuracy"] - measured["formats"]["keras"]["val_accuracy"], abs=1e-6)
        assert f"  {fmt} (" in result.stdout and "ms per example" in result.stdout
    assert f"quantized ({mode}); measured on {val_examples} validation examples:" in result.stdout
    files = sorted((mnist_dir / "4").glob("*.png"))[:3]
    for fmt in quantized:  # an ONNX export left float32 reloads as the plain one does (test_export_formats)
        rows = json.loads(run_cli("predict", tmp_path / mode, *files, "--format", fmt, "--json", "--plugin",
                                  TINY_PLUGIN, check=True).stdout)
        assert len(rows) == 3 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-2 for r in rows)
        # Without autotl, with the format's runtime alone: the same labels as autotl's own reading.
        _, takes = image_inputs(files, (16, 16), tmp_path)
        results, imported = reload_without_autotl(fmt, tmp_path / mode, takes[fmt], tmp_path)
        assert "autotl" not in imported
        assert list(results["arrays"].argmax(axis=1)) == [int(r["label"]) for r in rows], fmt


def test_an_int8_model_that_loses_too_much_is_refused_and_nothing_is_written(searched, tmp_path):
    _, store = searched
    with pytest.raises(AutotlError, match="loses .* of validation accuracy .* more than --max-accuracy-drop -1"):
        exporter.export(store, "digits", tmp_path / "refused", ("keras", "tflite"), plugin_files=[str(TINY_PLUGIN)],
                        quantize="int8", max_accuracy_drop=-1.0)  # any model loses more than -1
    assert not (tmp_path / "refused").exists()


def test_a_quantized_format_alone_is_still_measured_against_the_float32_model(searched, tmp_path):
    """`--format tflite --quantize int8` writes no float32 format: the `.keras` model is measured beside it,
    shown, guarded by --max-accuracy-drop, and not left in the export."""
    _, store = searched
    out = tmp_path / "alone"
    args = ["export", "digits", "--out", out, "--format", "tflite", "--quantize", "int8", "--store", store.url,
            "--plugin", TINY_PLUGIN]
    result = run_cli(*args, check=True)
    measured = json.loads((out / "autotl.json").read_text())["quantization"]
    assert measured["reference"] == "keras (measured, not written)" and set(measured["formats"]) == {"tflite"}
    tflite = measured["formats"]["tflite"]
    assert tflite["accuracy_change"] == pytest.approx(tflite["val_accuracy"] - measured["reference_val_accuracy"],
                                                      abs=1e-6)
    assert (f"reference, the float32 .keras model (not written): validation accuracy "
            f"{measured['reference_val_accuracy']:.4f}") in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["autotl.json", "model.tflite", "preprocessor"]
    with pytest.raises(AutotlError, match="int8 tflite model loses .* more than --max-accuracy-drop -1"):
        exporter.export(store, "digits", tmp_path / "refused", ("tflite",), plugin_files=[str(TINY_PLUGIN)],
                        quantize="int8", max_accuracy_drop=-1.0)  # any model loses more than -1
    assert not (tmp_path / "refused").exists()


def test_check_drop_compares_each_quantized_format_with_the_reference():
    assessed = {"reference": "keras", "reference_val_accuracy": 0.9, "formats": {"keras": {"val_accuracy": 0.9},
                                                  "tflite": {"val_accuracy": 0.88, "accuracy_change": -0.02}}}
    check_drop("int8", assessed, 0.02)
    check_drop("float16", assessed, 0.0)  # only int8 is refused
    with pytest.raises(AutotlError) as refused:
        check_drop("int8", assessed, 0.01)
    assert str(refused.value) == ("the int8 tflite model loses 0.0200 of validation accuracy (0.8800 against 0.9000), "
                                  "more than --max-accuracy-drop 0.01: try --quantize float16, or allow it with a "
                                  "higher --max-accuracy-drop")


def test_quantize_without_a_format_it_applies_to_is_a_usage_error(searched, tmp_path):
    _, store = searched
    result = run_cli("export", "digits", "--out", tmp_path / "x", "--quantize", "int8", "--store", store.url)
    assert (result.returncode, result.stderr.strip()) == (
        2, "Error: --quantize applies to the tflite and onnx formats: add --format tflite or --format onnx")
