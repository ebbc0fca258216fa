"""The commands on an exported model: `autotl predict`, `autotl evaluate` and `autotl serve`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autotl.cli_errors import handle_errors
from autotl.cli_options import JSON_OPTION, PLUGIN_OPTION
from autotl.errors import UsageError
from autotl.export.manifest import FORMATS


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "model_format", type=click.Choice(FORMATS),
              default="keras", help="Which exported format to run (onnx needs onnxruntime).")
@click.option("--text", "as_text", is_flag=True, help="Treat INPUTS as texts even if they name files.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="Write one row per input to FILE, CSV or JSONL by its extension (default: stdout).")
@click.option("--column", help="The column of a CSV/JSONL input that holds the inputs  [default: text for a text "
                               "model, path for an image model (relative to the table)]")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Classes (with their probabilities) per row.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Inputs read and run together; memory holds one batch, whatever the inputs' number.")
@PLUGIN_OPTION
@JSON_OPTION
@handle_errors
def predict(model_dir: str, inputs: tuple[str, ...], model_format: str, as_text: bool, out_file: str | None,
            column: str | None, top_k: int, batch_size: int, plugin_files: tuple[str, ...], as_json: bool) -> None:
    """Predict INPUTS with the exported model in MODEL_DIR: image files or folders of them, texts or .txt files,
    CSV/JSONL tables (one input per row, see --column), or - for one input per line of stdin.

    Inputs stream in batches, and an unreadable one is a row with its error: the run goes on."""
    from autotl.backbones.registry import load_registry
    from autotl.insight.bar import ProgressLine
    from autotl.runtime.loaded import LoadedModel
    from autotl.runtime.predictions import check_arguments, check_out, inputs_of, predicted_rows, writer_for

    check_out(out_file, as_json)
    model = LoadedModel(model_dir, model_format, load_registry(plugin_files))
    modality = model.manifest["modality"]
    if modality == "image" and as_text:
        raise UsageError(f"the model in {model_dir} takes images, not texts: give image files, without --text")
    check_arguments(inputs, modality, as_text)
    writer = writer_for(out_file, as_json, top_k)
    with ProgressLine("predicting", after_s=2.0) as progress:
        try:
            for row in predicted_rows(model, inputs_of(inputs, modality, as_text=as_text, column=column),
                                      batch_size, top_k):
                writer.write(row)
                progress.update(writer.written)
        finally:
            writer.close()
    if writer.unreadable:
        click.echo(f"{writer.unreadable} of {writer.written} input(s) could not be read (their rows say why)",
                   err=True)
    if not writer.written:
        raise UsageError("nothing to predict: the inputs hold no rows")


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--format", "model_format", type=click.Choice(FORMATS), default="keras",
              help="Which exported format to score (as `autotl predict --format`).")
@click.option("--text-col", default="text", help="Column (or JSON field) holding the text.")
@click.option("--label-col", default="label", help="Column (or JSON field) holding the label.")
@click.option("--strict", is_flag=True, help="Fail on an unreadable image or empty text instead of skipping it.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Also write each example's prediction (predictions.csv) and the confusion matrix "
                   "(confusion_matrix.png) into this folder.")
@click.option("--store", envvar="AUTOTL_STORE", show_envvar=True,
              help="Record the evaluation in this store (SQLAlchemy URL or SQLite file)  [default: the search's own "
                   "store, named in the export's manifest, when it is a SQLite file still there]")
@PLUGIN_OPTION
@JSON_OPTION
@handle_errors
def evaluate(model_dir: str, data: str, model_format: str, text_col: str, label_col: str, strict: bool,
             out_dir: str | None, store: str | None, plugin_files: tuple[str, ...], as_json: bool) -> None:
    """Score the exported model in MODEL_DIR on the labelled DATA (an image folder of class folders, or a CSV or
    JSONL of texts and labels, as `autotl search` reads them): accuracy, balanced accuracy, macro-F1 and
    per-class precision, recall and F1, log-loss, calibration error and the confusion matrix."""
    from autotl.backbones.registry import load_registry
    from autotl.insight.summary import evaluation_lines
    from autotl.runtime.evaluation import evaluate as score
    from autotl.runtime.loaded import LoadedModel

    model = LoadedModel(model_dir, model_format, load_registry(plugin_files))
    result = score(model, model_dir, model_format, data, text_col=text_col, label_col=label_col, strict=strict)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else "\n".join(evaluation_lines(result)))
    if out_dir is not None:
        from autotl.runtime.evaluation import write_outputs

        written = write_outputs(result, Path(out_dir).expanduser())
        click.echo(f"wrote {', '.join(str(path) for path in written)}", err=True)
    click.echo(_record_evaluation(model.manifest, result, store), err=True)


def _record_evaluation(manifest: dict, result, store_url: str | None) -> str:
    """Record an evaluation in the search's store; what became of it, in one line."""
    from autotl.runtime.evaluation import record, recording_store
    from autotl.store import Store

    url = recording_store(manifest, store_url)
    if url is None:
        return "not recorded: the search's store is not at hand here (give it with --store)"
    opened = Store(url)
    row, why_not = record(opened, manifest, result)
    if row is None:
        return f"not recorded: {why_not}"
    validation = row.metrics.get("validation_accuracy")
    gap = "" if validation is None else (f" (validation accuracy {validation:.4f}, test {row.accuracy:.4f}: "
                                         f"gap {validation - row.accuracy:+.4f})")
    return f"recorded as evaluation {row.id} of search {manifest['search']['name']!r} in {opened.display_url}{gap}"


@click.command()
@click.argument("model_dir")
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port to listen on (0: a free one).")
@click.option("--format", "model_format", default="keras", metavar="FORMAT",
              help="Which exported format to run (as `autotl predict --format`: keras, savedmodel...).")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=16 * 2**20,
              help="Largest request body accepted; bigger ones get 413.")
@click.option("--max-instances", type=click.IntRange(min=1), default=1024,
              help="Most instances in one /predict request; more get 413.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Largest image (width x height) accepted, checked from its header before decoding; larger get 413.")
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests read and answered at once (a bounded pool of threads).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Run the requests that arrive within this many milliseconds as one batch (0: each alone).")
@PLUGIN_OPTION
@handle_errors(needs_keras=False)  # imported once MODEL_DIR is known to exist
def serve(model_dir: str, host: str, port: int, model_format: str, max_request_bytes: int, max_instances: int,
          max_pixels: int, threads: int, batch_wait_ms: float, plugin_files: tuple[str, ...]) -> None:
    """Answer JSON prediction requests for the exported model in MODEL_DIR over HTTP.

    GET /health: labels and model. POST /predict with {"instances": [...]}:
    {"image_b64": "<base64 of an image file>"} or {"pixels": [[[r, g, b], ...], ...]}
    for image models, strings or {"text": "..."} for text models. Prints the URL
    it listens on to stderr, logs one line per request; Ctrl-C or SIGTERM stops it.
    """
    from autotl.runtime.serve import serve as run_server

    run_server(model_dir, host=host, port=port, model_format=model_format, plugin_files=list(plugin_files),
               max_request_bytes=max_request_bytes, max_instances=max_instances, max_pixels=max_pixels,
               threads=threads, batch_wait_ms=batch_wait_ms)
