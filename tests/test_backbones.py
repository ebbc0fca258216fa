"""Every built-in backbone plugin, and the README's plugin example, through a real search as a user
runs it: the CLI, tiny inputs, a trial at depth 0 and one at depth 1, with the activation cache and
without it; then the export, and `autotl predict` giving the probabilities the search saved for the
same validation examples (the checkpoint's, computed on the cached path). ResNet50's export is also
written in every format and each is run without autotl. (MiniLM's cached search and export are
test_text_search's; here it runs without the cache.)

Building a backbone was tested before, but nothing ran a search through ResNet50 or the README's
MobileNetV2, and every trial of both failed (`keras.applications` models take a one-element list).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from autotl import api
from autotl.data import read_image
from autotl.backbones.registry import load_registry
from autotl.store import COMPLETED, Store
from autotl.search.runner import VAL_PROBS_NAME

from conftest import run_cli
from test_export_formats import reload_without_autotl
from test_readme import readme_plugin

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
# Largest absolute difference of a probability from the search's own, per format (as in test_export_formats).
TOLERANCE = {"keras": 1e-5, "savedmodel": 1e-5, "onnx": 1e-4, "tflite": 1e-4}
# Every hyperparameter fixed but the depth, so that KerasTuner, which never repeats a trial's
# values, gives the two trials depths 0 and 1.
SPACE = {
    "image": "pooling: avg\nhead_layers: 0\nhead_units: 64\ndropout: 0.0\nhead_lr: 0.003\nfinetune_lr: 0.0001\n"
             "unfreeze_depth: {values: [0, 1]}\n",
    "text": "pooling: mean\nhead_layers: 0\nhead_units: 64\ndropout: 0.0\nhead_lr: 0.003\nfinetune_lr: 0.0001\n"
            "unfreeze_depth: {values: [0, 1]}\n",
}
ALL_FORMATS = ("keras", "savedmodel", "onnx", "tflite")


@dataclass
class Case:
    modality: str
    weights: str  # real weights where a package ships them offline, else none
    options: tuple = ("--image-size", "32")
    # Also export every format on TensorFlow and run each in a process where autotl cannot be imported
    # (test_export_formats and test_text_search do it for the tiny backbone and MiniLM).
    every_format: bool = False
    # Run the cached search's trials in a worker process, as by default (else in the search process,
    # which saves a process start and a backbone load: the matrix runs in CI on two backends).
    in_worker: bool = False
    # The cached search, export and predict (test_text_search does them for MiniLM through the same
    # code, and test_keras_hub_presets through the CLI: BERT's dict input always worked).
    cached: bool = True
    # Also on torch (CI's second run). The keras-hub backbones' cut, cache and training run there in
    # test_cache; the matrix adds the keras.applications ones, whose one-element list input every
    # trial failed on.
    on_torch: bool = False
    # Which of the two searches ("cached", "uncached") only the whole suite runs (pytest -m slow), to keep CI short.
    slow: tuple = ()


BACKBONES = {
    "resnet50": Case("image", "none", every_format=True, in_worker=True, on_torch=True,
                     slow=("cached", "uncached")),
    "efficientnet_lite0": Case("image", "imagenet", slow=("uncached",)),
    "bert": Case("text", "all-minilm-l6-v2", options=("--sequence-length", "16"), cached=False),
    "mobilenet_v2": Case("image", "none", on_torch=True, slow=("cached", "uncached")),  # the README's plugin example
}


CASES = [name for name, case in BACKBONES.items() if ON_TENSORFLOW or case.on_torch]


def cases(search: str, names: list[str]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if search in BACKBONES[name].slow else name for name in names]


@pytest.fixture(scope="module")
def readme_plugin_file(tmp_path_factory) -> Path:
    return readme_plugin(tmp_path_factory.mktemp("readme_plugin"))


def _search(tmp_path, data, backbone, readme_plugin_file, *extra):
    case = BACKBONES[backbone]
    plugin = ["--plugin", readme_plugin_file] if backbone == "mobilenet_v2" else []
    (tmp_path / "space.yaml").write_text(SPACE[case.modality])
    store = Store(f"sqlite:///{tmp_path / 'autotl.db'}")
    run_cli("search", data, "--backbone", backbone, "--weights", case.weights, *case.options,
            "--space", tmp_path / "space.yaml",
            "--max-trials", 2, "--epochs", 1, "--finetune-epochs", 1, "--batch-size", 16, "--name", "matrix",
            "--workdir", tmp_path / "runs", "--store", store.url, *plugin, *extra, check=True)
    return store, plugin


def _check_trials(store: Store, cached: bool):
    search = store.get_search("matrix")
    trials = store.list_trials(search.id)
    assert [t.status for t in trials] == [COMPLETED, COMPLETED]
    assert sorted(t.hyperparameters["unfreeze_depth"] for t in trials) == [0, 1]
    for trial in trials:
        phases = {m.phase for m in store.epoch_metrics(trial.id)}
        assert phases == ({"head", "finetune"} if trial.hyperparameters["unfreeze_depth"] else {"head"})
        assert trial.data_path["status"] in (("computed", "hit") if cached else ("bypassed",)), trial.data_path
    return search


def validation_inputs(search, plugin, count: int = 10) -> list[str]:
    """The first validation examples, as `autotl predict` takes them: image files, or texts."""
    preprocessing = search.config["preprocessing"]
    backbone = load_registry(plugin[1:]).get(search.backbone)
    preprocessor = backbone.preprocessor(search.weights, {"image_size": preprocessing.get("image_size"),
                                                          "sequence_length": preprocessing.get("sequence_length")})
    _, val = api.load_split(api.config_from_record(search), search.modality, preprocessor)
    return list(val.examples if search.modality == "text" else val.sources)[:count]


def saved_probabilities(store: Store, search, count: int) -> np.ndarray:
    """The first `count` validation probabilities the search saved with its best trial's checkpoint."""
    best = store.best_trial(search)  # the trial autotl export exports
    (checkpoint,) = [a for a in store.artifacts(search.id, kind="checkpoint") if a.trial_id == best.id]
    return np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME)[:count]


def _predict(export_dir: Path, inputs: list[str], plugin, text: bool) -> np.ndarray:
    rows = json.loads(run_cli("predict", export_dir, *inputs, "--json", *plugin,
                              *(["--text"] if text else []), check=True).stdout)
    labels = json.loads((export_dir / "autotl.json").read_text())["labels"]
    return np.array([[row["probabilities"][label] for label in labels] for row in rows])


@pytest.mark.parametrize("backbone", cases("cached", [name for name in CASES if BACKBONES[name].cached]))
def test_a_cached_search_runs_both_depths_and_every_export_predicts_like_the_checkpoint(
        backbone, tmp_path, mnist_dir, reviews_csv, readme_plugin_file):
    case = BACKBONES[backbone]
    store, plugin = _search(tmp_path, reviews_csv if case.modality == "text" else mnist_dir, backbone,
                            readme_plugin_file, *([] if case.in_worker else ["--trials-per-worker", 0]))
    search = _check_trials(store, cached=True)
    every_format = case.every_format and ON_TENSORFLOW
    out = tmp_path / "export"
    run_cli("export", "matrix", "--out", out, *[a for f in (ALL_FORMATS if every_format else ("keras",))
                                                for a in ("--format", f)],
            "--store", store.url, *plugin, check=True)
    inputs = validation_inputs(search, plugin)
    expected = saved_probabilities(store, search, len(inputs))
    got = _predict(out, inputs, plugin, text=case.modality == "text")
    assert_close(got, expected, f"{backbone}: autotl predict", TOLERANCE["keras"])
    if plugin:  # the README's example: predicting with its export needs the plugin file, and says so
        without = run_cli("predict", out, inputs[0])
        assert without.returncode == 1 and "--plugin FILE" in without.stderr and "Traceback" not in without.stderr
    if every_format:
        _check_reload_without_autotl(out, inputs, search, expected, tmp_path)


def _check_reload_without_autotl(out: Path, files: list[str], search, expected: np.ndarray, work: Path) -> None:
    """Each format run by its own runtime alone: the .keras on pixels as autotl reads them, the SavedModel
    on the image files, ONNX and TFLite on the decoded pixels at the files' own size (resized inside)."""
    size = tuple(search.config["preprocessing"]["image_size"])
    np.savez(work / "model_inputs.npz", x=np.stack([read_image(f, size) for f in files]).astype("float32"))
    np.savez(work / "arrays.npz", **{str(i): np.asarray(Image.open(f).convert("RGB")) for i, f in enumerate(files)})
    specs = {"keras": ("model_inputs", str(work / "model_inputs.npz")), "savedmodel": ("files", files),
             "onnx": ("arrays", str(work / "arrays.npz")), "tflite": ("arrays", str(work / "arrays.npz"))}
    for model_format, (kind, value) in specs.items():
        results, imported = reload_without_autotl(model_format, out, {kind: value}, work)
        assert "autotl" not in imported and "autotl_plugins" not in imported
        assert_close(results[kind], expected, f"{model_format} without autotl", TOLERANCE[model_format])


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, tolerance: float) -> None:
    assert got.shape == expected.shape, what
    difference = float(np.abs(got - expected).max())
    print(f"{what}: max abs probability difference {difference:.3g} (tolerance {tolerance})")
    assert difference <= tolerance, what


@pytest.mark.parametrize("backbone", cases("uncached", CASES))
def test_a_search_without_the_cache_runs_both_depths_end_to_end(backbone, tmp_path, mnist_dir, reviews_csv,
                                                                 readme_plugin_file):
    data = reviews_csv if BACKBONES[backbone].modality == "text" else mnist_dir
    store, _ = _search(tmp_path, data, backbone, readme_plugin_file,
                       "--no-cache", "--trials-per-worker", 0)
    _check_trials(store, cached=False)
