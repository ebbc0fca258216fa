"""Image maths inside the exported graphs: decoding image files and resizing pixels exactly as Pillow does.

TensorFlow ops only (builtin ops of TFLite and ONNX), so an export that resizes inside
sees the very pixels autotl's reader (`autotl.data.read_image`) gives the search.
"""

from __future__ import annotations

# Pillow's fixed-point precision for 8-bit images (libImaging/Resample.c: 32 - 8 - 2 bits).
_PRECISION_BITS = 22


def decode_image(contents):
    """An encoded image file (scalar ``tf.string``) -> uint8 RGB ``(H, W, 3)``, as `autotl.data.decode_image` reads it.

    JPEG through libjpeg's accurate integer DCT (Pillow's); PNG and BMP with transparency
    composited onto white with Pillow's integer formula (`flatten_alpha`); GIF's first frame.
    Unlike autotl's reader it applies no EXIF orientation and no GIF transparency, and
    reads no TIFF or WebP.
    """
    import tensorflow as tf

    def jpeg():
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def gif():
        return tf.io.decode_gif(contents)[0]

    def other():  # PNG, BMP
        return flatten_alpha(tf.io.decode_image(contents, channels=4, expand_animations=False))

    def not_jpeg():
        return tf.cond(tf.equal(tf.strings.substr(contents, 0, 4), "GIF8"), gif, other)

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(contents), jpeg, not_jpeg), (None, None, 3))


def flatten_alpha(rgba):
    """uint8 RGBA -> RGB composited onto opaque white, as Pillow's ``alpha_composite`` computes it."""
    import tensorflow as tf

    x = tf.cast(rgba, tf.int32)
    rgb, alpha = x[..., :3], x[..., 3:]
    # ImagingAlphaComposite with an opaque white destination: 7-bit coefficients, rounded /255.
    mixed = 128 * (rgb * alpha + 255 * (255 - alpha)) + (0x80 << 7)
    mixed = ((mixed // 256 + mixed) // 256) // 128
    return tf.cast(tf.where(alpha == 0, 255, mixed), tf.uint8)


def pil_resize(images, size: tuple[int, int], vertical_first_rule: bool = True):
    """uint8 ``(N, H, W, C)`` of any H, W -> float32 ``(N, h, w, C)``: Pillow's ``resize(BILINEAR)``, bit for bit.

    Pillow resamples each axis with a triangle filter stretched over the reduction
    (antialiased), with 22-bit fixed-point weights, rounding to uint8 after each pass.
    Here the weights are computed exactly in int32 and each pass is a matrix product
    with the weights split into three 8-bit digits, each product exact in float32 (sums
    below 2**24 as long as an output pixel draws on at most 255 input pixels, i.e. up to
    a 127x reduction per side), then carried and rounded as Pillow does. Pillow 13
    runs the vertical pass first when the height shrinks by more than twice what the
    width does (`vertical_first_rule`; older Pillow always runs the horizontal pass
    first). Only builtin ops of TFLite and ONNX: the same graph converts to both.
    """
    import tensorflow as tf

    height, width = int(size[0]), int(size[1])
    x = tf.transpose(tf.cast(images, tf.float32), (0, 3, 1, 2))  # (N, C, H, W): both passes are matmuls
    shape = tf.shape(images)
    in_height, in_width = shape[1], shape[2]

    def horizontal(t):  # (N, C, H, W) @ (W, w)
        sums = tf.matmul(t, tf.transpose(_digits(_pil_weights(in_width, width))))
        return _round(*tf.split(sums, 3, axis=-1))

    def vertical(t):  # (h, H) @ (N, C, H, W)
        sums = tf.matmul(_digits(_pil_weights(in_height, height)), t)
        return _round(*tf.split(sums, 3, axis=-2))

    if vertical_first_rule:
        shrink = in_height - height
        first = tf.logical_and(shrink > 0, shrink > 2 * (in_width - width))
        out = tf.cond(first, lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    else:
        out = vertical(horizontal(x))
    return tf.ensure_shape(tf.transpose(out, (0, 2, 3, 1)), (None, height, width, None))


def _pil_weights(in_size, out_size: int):
    """Pillow's fixed-point BILINEAR weights, int32 ``(out_size, in_size)``.

    Pillow's weight of input pixel j for output pixel i is the triangle
    ``max(0, 1 - |j + 0.5 - center_i| / scale)`` normalised over j, times 2**22 and
    rounded; with ``D = 2 max(in, out)`` and ``num = (2j + 1) out - (2i + 1) in`` that is
    ``round(a / sum(a) * 2**22)`` with ``a = max(D - |num|, 0)``, integers throughout.
    The division runs as long division, two bits at a time, so nothing exceeds int32.
    """
    import tensorflow as tf

    in_size = tf.cast(in_size, tf.int32)
    out = tf.constant(out_size, tf.int32)
    j = tf.range(in_size, dtype=tf.int32)
    i = tf.range(out_size, dtype=tf.int32)
    num = (2 * j[None, :] + 1) * out - (2 * i[:, None] + 1) * in_size
    a = tf.maximum(2 * tf.maximum(in_size, out) - tf.abs(num), 0)
    total = tf.reduce_sum(a, axis=1, keepdims=True)
    quotient = a // total
    remainder = a - quotient * total
    for _ in range(_PRECISION_BITS // 2):
        remainder = remainder * 4
        digit = remainder // total
        quotient = quotient * 4 + digit
        remainder = remainder - digit * total
    return quotient + tf.cast(2 * remainder >= total, tf.int32)  # round half up, as (int)(0.5 + k)


def _digits(weights):
    """int32 ``(out, in)`` weights -> float32 ``(3 out, in)``: their low, middle and high 8-bit digits."""
    import tensorflow as tf

    digits = (weights % 256, (weights // 256) % 256, weights // 65536)
    return tf.cast(tf.concat(digits, axis=0), tf.float32)


def _round(low, middle, high):
    """``clip8((2**21 + sum) >> 22)`` of ``sum = low + 2**8 middle + 2**16 high``, exactly, in float32."""
    import tensorflow as tf

    carry = tf.floor(low / 256.0)
    carry = tf.floor((middle + carry) / 256.0)
    top = high + carry  # the sum without its low 16 bits, which cannot carry into bit 22 once 2**21 is added
    return tf.clip_by_value(tf.floor((top + 32.0) / 64.0), 0.0, 255.0)


_VERTICAL_FIRST: bool | None = None


def pillow_vertical_first() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks most (Pillow 13 does).

    Found by resizing a probe image with Pillow and comparing with both orders: the
    export reproduces the Pillow that autotl reads images with.
    """
    global _VERTICAL_FIRST
    if _VERTICAL_FIRST is None:
        import numpy as np
        from PIL import Image

        probe = np.random.default_rng(0).integers(0, 256, (97, 31, 3), dtype=np.uint8)
        size = (7, 29)  # the height shrinks by far more than twice the width
        expected = np.asarray(Image.fromarray(probe).resize(size[::-1], Image.Resampling.BILINEAR))
        rule = pil_resize(probe[None], size, vertical_first_rule=True)[0].numpy()
        plain = pil_resize(probe[None], size, vertical_first_rule=False)[0].numpy()
        _VERTICAL_FIRST = bool(np.array_equal(rule, expected) or not np.array_equal(plain, expected))
    return _VERTICAL_FIRST
