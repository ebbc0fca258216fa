"""What a prediction request means: an exported model behind ``/health`` and ``/predict``, independent of HTTP.

`PredictionService` checks a request's JSON payload (its instances: image file bytes
in base64, uint8 pixel arrays, or texts) and answers it with the model's predictions;
a bad request raises `RequestError` with the HTTP status it is answered with.
"""

from __future__ import annotations

import base64
import binascii
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autotl.errors import AutotlError, first_line
from autotl.quiet import import_keras_quietly

DEFAULT_MAX_INSTANCES = 1024


class RequestError(Exception):
    """A bad request: answered with `status` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = " ".join(str(message).split())  # one line


class PredictionService:
    """An exported model behind the two endpoints, independent of HTTP."""

    def __init__(self, model, max_instances: int = DEFAULT_MAX_INSTANCES):
        self.model = model  # an autotl.runtime.loaded.LoadedModel
        self.manifest = model.manifest
        self.modality = self.manifest["modality"]
        self.labels = list(model.labels)
        self.max_instances = max_instances
        if self.modality == "image":
            self.image_size = tuple(int(v) for v in self.manifest["preprocessing"]["image_size"])
        self._lock = threading.Lock()

    def health(self) -> dict[str, Any]:
        search = self.manifest.get("search") or {}
        return {
            "status": "ok",
            "labels": self.labels,
            "format": self.model.format,
            "modality": self.modality,
            "backbone": self.manifest.get("backbone"),
            "model_dir": str(self.model.directory.resolve()),
            "search": search.get("name"),
            "trial": search.get("trial"),
            "max_instances": self.max_instances,
        }

    def predict(self, payload: Any) -> dict[str, Any]:
        instances = self._instances(payload)
        if self.modality == "image":
            examples = [self._image(i, instance) for i, instance in enumerate(instances)]
        else:
            examples = [self._text(i, instance) for i, instance in enumerate(instances)]
        try:
            with self._lock:
                predictions = self.model.predict(examples)
        except AutotlError as exc:  # an input the model's own reading refuses
            raise RequestError(422, first_line(exc)) from None
        return {"predictions": [{"label": p.label, "probabilities": p.probabilities} for p in predictions]}

    def _instances(self, payload: Any) -> list[Any]:
        if not isinstance(payload, dict):
            raise RequestError(400, f"the body must be a JSON object with \"instances\", got {_json_type(payload)}")
        if "instances" not in payload:
            raise RequestError(400, "missing field \"instances\" (a list of instances to predict)")
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise RequestError(400, f"\"instances\" must be a list, got {_json_type(instances)}")
        if not instances:
            raise RequestError(400, "\"instances\" is empty: give at least one instance")
        if len(instances) > self.max_instances:
            raise RequestError(413, f"{len(instances)} instances in one request; at most {self.max_instances} "
                                    "(--max-instances)")
        return instances

    def _image(self, index: int, instance: Any) -> bytes | np.ndarray:
        """The instance's image file bytes or uint8 pixels, checked to decode.

        The model is given these, not the decoded array, so that it reads them
        exactly as `autotl predict` reads a file, whatever the export format.
        """
        from autotl.data import read_image

        where = f"instance {index}"
        if not isinstance(instance, dict) or not ({"image_b64", "pixels"} & set(instance)):
            raise RequestError(400, f"{where}: an image model takes objects with \"image_b64\" (base64 of an "
                                    f"image file) or \"pixels\" (an array of uint8), got {_json_type(instance)}")
        if "image_b64" in instance and "pixels" in instance:
            raise RequestError(400, f"{where}: give \"image_b64\" or \"pixels\", not both")
        if "image_b64" in instance:
            source: bytes | np.ndarray = _decode_base64(where, instance["image_b64"])
        else:
            source = _pixel_array(where, instance["pixels"])
        try:
            read_image(source, self.image_size)
        except AutotlError as exc:
            raise RequestError(422, f"{where}: {first_line(exc)}") from None
        return source

    def _text(self, index: int, instance: Any) -> str:
        if isinstance(instance, dict) and "text" in instance:
            instance = instance["text"]
        elif isinstance(instance, dict):
            raise RequestError(400, f"instance {index}: missing field \"text\"")
        if not isinstance(instance, str):
            raise RequestError(400, f"instance {index}: a text model takes strings or objects with \"text\", "
                                    f"got {_json_type(instance)}")
        return instance


def _decode_base64(where: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{where}: \"image_b64\" must be a base64 string, got {_json_type(value)}")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    compact = "".join(value.split())  # `base64` wraps its output at 76 columns
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: \"image_b64\" is not valid base64 ({first_line(exc)})") from None
    if not data:
        raise RequestError(422, f"{where}: \"image_b64\" is empty")
    return data


def _pixel_array(where: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        raise RequestError(422, f"{where}: \"pixels\" must be a rectangular array (H, W) or (H, W, C)") from None
    if array.dtype.kind == "O" or array.dtype.kind not in "iuf" or array.size == 0:
        raise RequestError(422, f"{where}: \"pixels\" must be a non-empty array of integers 0 to 255")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise RequestError(422, f"{where}: \"pixels\" has shape {list(array.shape)}; use (H, W), (H, W, 1), "
                                "(H, W, 3) or (H, W, 4)")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise RequestError(422, f"{where}: \"pixels\" must be integers 0 to 255")
    if array.min() < 0 or array.max() > 255:
        raise RequestError(422, f"{where}: \"pixels\" must be integers 0 to 255, got {array.min()} to {array.max()}")
    return array.astype(np.uint8)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def load_service(model_dir: str | Path, model_format: str = "keras", plugin_files: Sequence[str] = (),
                 max_instances: int = DEFAULT_MAX_INSTANCES) -> PredictionService:
    """Load the export in `model_dir` for serving (Keras safe mode: no code from the model file)."""
    from autotl.runtime.loaded import LoadedModel
    from autotl.backbones.registry import load_registry

    directory = Path(model_dir).expanduser()
    if not directory.exists():
        raise AutotlError(f"model folder {directory} does not exist")
    if not directory.is_dir():
        raise AutotlError(f"{directory} is a file, not an exported model folder")
    import_keras_quietly()
    model = LoadedModel(directory, model_format, load_registry(list(plugin_files)))  # refuses code (safe mode)
    return PredictionService(model, max_instances=max_instances)
