"""`autotl report`: the HTML page of a real tiny search on MNIST digits, written by the CLI in a
subprocess, opened in headless Chromium (Debian's `chromium`) to check that every image loads."""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autotl import api

from autotl.insight import report
from autotl.store import FAILED, Store
from autotl.search.records import VAL_PROBS_NAME

from conftest import TINY_PLUGIN, requires, run_cli

SPACE = "unfreeze_depth: {values: [1, 2]}\nhead_lr: {min: 0.001, max: 0.01, sampling: log}\n"
# Those the search tunes: a hyperparameter the space fixes (augment, the training recipe) gets no plot.
HYPERPARAMETERS = ("pooling", "head_layers", "head_units", "dropout", "unfreeze_depth", "head_lr", "finetune_lr")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Appended to a copy of the page next to it (same folder, so the same relative paths): once the page and
# its images have loaded, it writes what each <img> got into the DOM, which `--dump-dom` prints.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var rows = Array.prototype.map.call(document.images, function (img) {
    return {src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth, height: img.naturalHeight};
  });
  var out = document.createElement("pre");
  out.id = "autotl-image-check";
  out.textContent = JSON.stringify(rows);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory, mnist_dir):
    """A finished tiny search (3 trials, both phases), plus one failed trial row for the page to show."""
    root = tmp_path_factory.mktemp("report")
    (root / "space.yaml").write_text(SPACE)
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(
        data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)], image_size=16,
        max_trials=3, epochs=3, finetune_epochs=2, batch_size=16, patience=2, seed=1, name="reported",
        space_file=str(root / "space.yaml"), workdir=str(root / "runs"), trials_per_worker=0)
    result = api.search(config, store)
    failed = store.start_trial(result.search.id, "failed-one", dict(result.best.hyperparameters))
    store.finish_trial(failed.id, FAILED, error="worker died: killed by the OOM killer\n(more details)")
    return root, store, result, config


@pytest.fixture(scope="module")
def written(searched):
    """`autotl report` run once through the CLI, in a fresh process."""
    root, store, _, _ = searched
    out = root / "report"
    done = run_cli("report", "reported", "--out", out, "--store", store.url, check=True)
    return out, done


def _img_sources(page: str) -> list[str]:
    return [html.unescape(src) for src in re.findall(r'<img [^>]*src="([^"]+)"', page)]


def test_the_page_and_every_plot_are_written_and_referenced(searched, written):
    _, store, result, _ = searched
    out, done = written
    assert done.stdout.strip() == f"report written to {out / 'index.html'} (10 plots)"
    page = (out / "index.html").read_text()
    expected = {"plots/progress.png", "plots/learning_curves.png", "plots/confusion_matrix.png",
                *(f"plots/hp_{name}.png" for name in HYPERPARAMETERS)}
    sources = _img_sources(page)
    assert set(sources) == expected and len(sources) == len(expected)
    written_files = {p.relative_to(out).as_posix() for p in (out / "plots").iterdir()}
    assert written_files == expected
    for source in sources:
        assert (out / source).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", source
        assert not source.startswith(("/", "file:", "http")), "plots are referenced relatively"
    # Offline: no script, stylesheet or image from anywhere else.
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<link" not in page
    # The summary, and a row per trial (the failed one with its error's first line).
    search = result.search
    for text in ("tiny_cnn (image)", "val_accuracy (max)", store.display_url, str(Path(search.workdir)),
                 f"{result.best.number}: val_accuracy", "worker died: killed by the OOM killer"):
        assert html.escape(text) in page, text
    assert "(more details)" not in page
    rows = re.findall(r'<tr class="([a-z]+)">', page)
    assert len(rows) == 4 and rows.count("best") == 1 and rows.count("failed") == 1
    for name in HYPERPARAMETERS:
        assert f"<th>{name}</th>" in page


def test_the_confusion_matrix_counts_the_best_trials_validation_predictions(searched, written):
    root, store, result, config = searched
    out, _ = written
    checkpoint = store.artifacts(result.search.id, kind="checkpoint", trial_id=result.best.id)[-1]
    probs = np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME)
    val_count = result.search.config["val_examples"]
    right = round(result.best.value * val_count)
    assert len(probs) == val_count
    page = (out / "index.html").read_text()
    assert f"{right} of {val_count} validation examples right" in page
    matrix, why_not, model = report._confusion(store, result.search, result.best)
    assert why_not == "" and matrix.shape == (10, 10) and matrix.sum() == val_count
    assert model == f"trial {result.best.number}" and f"{model}: {right} of {val_count}" in page
    assert np.trace(matrix) == right
    assert matrix.sum(axis=1).tolist() == [2] * 10  # 12 digits a class, 0.2 to validation


def test_the_report_reads_the_probabilities_the_trial_saved():
    assert report.VAL_PROBS_NAME == VAL_PROBS_NAME


def _chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _images_in_chromium(page: Path, profile: Path) -> list[dict]:
    """Open `page` (a copy of it, with IMAGE_CHECK) in headless Chromium; what each <img> loaded."""
    check = page.with_name("_image_check.html")
    check.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    try:
        done = subprocess.run(
            [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
             "--virtual-time-budget=10000", "--dump-dom", check.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        check.unlink()
    found = re.search(r'<pre id="autotl-image-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no image check (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_every_image_loads_in_headless_chromium(written, tmp_path):
    requires(_chromium() is not None, "no headless browser: install Debian's chromium (apt-get install chromium; "
                                      ".ci/run does)")
    out, _ = written
    images = _images_in_chromium(out / "index.html", tmp_path / "profile")
    assert len(images) == 10
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    # The check can fail: an image whose file is gone reports a natural width of 0.
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "plots" / "progress.png").unlink()
    images = {i["src"]: i for i in _images_in_chromium(broken / "index.html", tmp_path / "profile")}
    assert images["plots/progress.png"]["width"] == 0
    assert all(i["width"] > 0 for src, i in images.items() if src != "plots/progress.png")


def _store_copy(store: Store, path: Path) -> Store:
    source, target = sqlite3.connect(store.engine.url.database), sqlite3.connect(path)
    source.backup(target)
    source.close(), target.close()
    return Store(f"sqlite:///{path}")


def test_a_search_whose_data_are_gone_gets_a_page_that_says_so(searched, tmp_path):
    _, store, result, _ = searched
    moved = _store_copy(store, tmp_path / "moved.db")
    with moved.session() as session:
        row = session.get(type(result.search), result.search.id)
        row.config = {**row.config, "data": str(tmp_path / "gone")}
    done = run_cli("report", "reported", "--out", tmp_path / "out", "--store", moved.url)
    assert done.returncode == 0, done.stderr
    assert f"Warning: confusion matrix left out: the search's data are gone ({tmp_path / 'gone'} does not exist)" \
        in done.stderr
    page = (tmp_path / "out" / "index.html").read_text()
    assert "the search&#x27;s data are gone" in page
    assert "plots/confusion_matrix.png" not in page and "plots/progress.png" in page


def _one_line_error(done: subprocess.CompletedProcess, exit_code: int, *fragments: str) -> None:
    assert done.returncode == exit_code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_errors_are_one_line_with_exit_code_1(searched, tmp_path):
    _, store, result, _ = searched
    out = tmp_path / "out"
    _one_line_error(run_cli("report", "nope", "--out", out, "--store", store.url), 1, "no search 'nope'")
    assert not out.exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_line_error(run_cli("report", "reported", "--out", blocker, "--store", store.url), 1,
                    f"cannot write the report to {blocker}", "not a folder")
    _one_line_error(run_cli("report", "reported", "--out", blocker / "inside", "--store", store.url), 1,
                    f"cannot write the report to {blocker / 'inside'}")
    assert blocker.read_text() == "not a folder"

    empty = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    row = empty.create_search(name="nothing-yet", backbone="tiny_cnn", weights="none", modality="image",
                              dataset_path="/nowhere", dataset_fingerprint="0" * 64, labels=["a", "b"], config={},
                              objective="val_accuracy", direction="max", workdir=str(tmp_path / "runs"))
    broken = empty.start_trial(row.id, "t0", {"dropout": 0.1})
    empty.finish_trial(broken.id, FAILED, error="boom")
    _one_line_error(run_cli("report", "nothing-yet", "--out", out, "--store", empty.url), 1,
                    "search 'nothing-yet' has no completed trial to report", "1 failed")
    assert not out.exists()
