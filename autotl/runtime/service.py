"""What a prediction request means: an exported model behind ``/health`` and ``/predict``, independent of HTTP.

`PredictionService` checks a request's JSON payload (its instances: image file bytes
in base64, uint8 pixel arrays, or texts) and answers it with the model's predictions;
a bad request raises `RequestError` with the HTTP status it is answered with.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autotl.errors import AutotlError, first_line
from autotl.quiet import import_keras_quietly
from autotl.runtime.batcher import DEFAULT_WAIT_MS, MicroBatcher

DEFAULT_MAX_INSTANCES = 1024
# An image of more pixels than this is refused before it is decoded: a 144-megapixel PNG of 136 KB once took
# 3 s and 230 MB to answer. Pillow itself refuses only beyond 179 megapixels.
DEFAULT_MAX_PIXELS = 40_000_000


class RequestError(Exception):
    """A bad request: answered with `status` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = " ".join(str(message).split())  # one line


class PredictionService:
    """An exported model behind the two endpoints, independent of HTTP."""

    def __init__(self, model, max_instances: int = DEFAULT_MAX_INSTANCES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 batch_wait_ms: float = DEFAULT_WAIT_MS):
        self.model = model  # an autotl.runtime.loaded.LoadedModel
        self.manifest = model.manifest
        self.modality = self.manifest["modality"]
        self.labels = list(model.labels)
        self.max_instances = max_instances
        self.max_pixels = max_pixels
        self.batcher = MicroBatcher(model.probabilities, wait_s=batch_wait_ms / 1000)

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
            "max_pixels": self.max_pixels,
            "batch_wait_ms": self.batcher.wait_s * 1000,
        }

    def predict(self, payload: Any) -> dict[str, Any]:
        """Each instance read (and checked) here, in the request's thread, then run with the other requests of
        the moment (`MicroBatcher`)."""
        instances = self._instances(payload)
        if self.modality == "image":
            prepared = [self._image(i, instance) for i, instance in enumerate(instances)]
        else:
            prepared = [self.model.prepare(self._text(i, instance)) for i, instance in enumerate(instances)]
        try:
            probabilities = self.batcher(prepared)
        except AutotlError as exc:  # an input the model's own reading refuses
            raise RequestError(422, first_line(exc)) from None
        return {"predictions": [dict(zip(("label", "probabilities"), self.model.labelled(row)))
                                for row in probabilities]}

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

    def _image(self, index: int, instance: Any) -> Any:
        """The instance's image, read as `autotl predict` reads a file (`LoadedModel.prepare`): from its file
        bytes or its uint8 pixels, once their size is known to be within `max_pixels`."""
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
        self._check_pixels(where, source)
        try:
            return self.model.prepare(source)
        except AutotlError as exc:
            raise RequestError(422, f"{where}: {first_line(exc)}") from None

    def _check_pixels(self, where: str, source: bytes | np.ndarray) -> None:
        """Refuse (413) an image larger than `max_pixels` from its header alone, before decoding it."""
        if isinstance(source, np.ndarray):
            height, width = source.shape[:2]
        else:
            import io
            import warnings

            from PIL import Image

            too_large = f"at most {self.max_pixels / 1e6:g} megapixels (--max-pixels)"
            try:
                with warnings.catch_warnings():  # Pillow warns of decompression bombs beyond 89 megapixels
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(source)) as image:  # reads the header only
                        width, height = image.size
            except Image.DecompressionBombError:  # beyond 179 megapixels Pillow refuses to open it
                raise RequestError(413, f"{where}: an image of more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.4g} "
                                        f"megapixels; {too_large}") from None
            except Exception:  # noqa: BLE001 - not an image Pillow knows: `prepare` says why, in one line
                return
        if width * height > self.max_pixels:
            raise RequestError(413, f"{where}: a {width}x{height} image ({width * height / 1e6:.4g} megapixels); "
                                    f"at most {self.max_pixels / 1e6:g} megapixels (--max-pixels)")

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
                 max_instances: int = DEFAULT_MAX_INSTANCES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 batch_wait_ms: float = DEFAULT_WAIT_MS) -> PredictionService:
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
    return PredictionService(model, max_instances=max_instances, max_pixels=max_pixels, batch_wait_ms=batch_wait_ms)
