"""Reading one image: decoding a file, bytes or array to uint8 RGB, and resizing it as the search saw it.

`read_image` decodes and resizes once, at load time; the search keeps the
resulting uint8 arrays in memory, and prediction calls the very same function,
so a deployed model sees exactly the pixels the search saw.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autotl.data.dataset import one_line
from autotl.errors import AutotlError, UsageError

# Transparent pixels have no defined colour (a PNG may store anything under
# alpha 0), so they are composited onto this fixed background.
ALPHA_BACKGROUND = (255, 255, 255)

# PIL opens 16-bit grayscale PNG/TIFF as one of these ("I", 32-bit, on older
# versions); their values are read as 0..65535, and an "I" image with values
# outside that range (a true 32-bit or a signed image) is refused rather than
# clipped. Float ("F") images are read as 0..255, clipped to that range.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class UnreadableImageError(AutotlError):
    """An image file (or buffer) that PIL cannot decode."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


def read_image(source: str | Path | bytes | np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Decode `source` into a uint8 ``(H, W, 3)`` RGB array of ``image_size = (H, W)``.

    `source` is a file path, encoded image bytes, or an array ``(H, W)``,
    ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of uint8 pixels. The steps:
    apply the EXIF orientation (phone photos are often stored sideways), take
    the first frame of animations, convert any mode to RGB (grayscale is
    replicated; 16-bit is scaled to 8-bit; transparency is composited onto
    white), then resize with PIL's bilinear filter. Palette, CMYK, YCbCr, LAB,
    1-bit, grayscale(+alpha) and 16-bit images are all converted this way.

    Raises `UnreadableImageError` when the source cannot be decoded, or holds
    pixels with no 8-bit reading (32-bit integers beyond 16-bit values).
    """
    height, width = check_image_size(image_size)
    rgb = _decode_rgb(source)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_image(source: str | Path | bytes | np.ndarray) -> np.ndarray:
    """`read_image` without the resize: a uint8 ``(H, W, 3)`` RGB array at the source's own size.

    What exports that resize inside the model take (see `autotl.export.tf_formats`):
    their resize reproduces the one `read_image` applies.
    """
    return np.asarray(_decode_rgb(source), dtype=np.uint8)


def _decode_rgb(source: str | Path | bytes | np.ndarray) -> Image.Image:
    try:
        image = _open_image(source)
        with image:
            return _to_rgb(image)
    except (AutotlError, MemoryError):
        raise
    except Exception as exc:  # PIL raises a zoo of types for bad files: OSError, SyntaxError, ValueError...
        raise UnreadableImageError(_describe(source), _reason(exc)) from exc


def _open_image(source: str | Path | bytes | np.ndarray) -> Image.Image:
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(source)))
    else:
        image = Image.open(Path(source))
    try:
        image.load()  # decode now: truncated files fail here rather than later
    except BaseException:
        image.close()
        raise
    return image


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise UnreadableImageError(
            f"array of shape {array.shape}",
            f"pixels must be uint8, got dtype {array.dtype}: convert with np.clip(a, 0, 255).astype('uint8')",
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))
    raise UnreadableImageError(
        f"array of shape {array.shape}", "the shape must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255 (nearly all white).
        image = _sixteen_bit_to_gray(image)
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8))
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_gray(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"unsupported pixels: 32-bit integers ({values.min():.0f} to {values.max():.0f}) beyond the "
            "16-bit range autotl reads: save it as an 8- or 16-bit image"
        )
    scaled = values / 257.0  # 65535 -> 255
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def check_image_size(image_size: tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` as two positive ints, or `UsageError`."""
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UsageError(f"image size must be two positive integers (height, width), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise UsageError(f"image size must be two positive integers (height, width), got {image_size!r}")
    return height, width


def _describe(source: object) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"array of shape {source.shape}"
    return f"<{len(source)} bytes>"  # type: ignore[arg-type]


def _reason(exc: BaseException) -> str:
    """The exception's message on one line."""
    if isinstance(exc, UnidentifiedImageError):  # PIL's message only repeats the path
        return "corrupt, or not an image format PIL can decode"
    return one_line(exc)
