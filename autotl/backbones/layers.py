"""Small serialisable Keras layers used inside autotl models (keras.ops only)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="autotl")
class PixelNormalization(keras.layers.Layer):
    """Maps pixels in [0, 255] to what a pretrained network expects.

    ``y = (x[..., order] - mean) / std`` with `mean` and `std` per channel, in
    pixel units; ``reverse_channels=True`` turns RGB into BGR first (Caffe-style
    weights such as Keras' ResNet50).
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.reverse_channels = bool(reverse_channels)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.reverse_channels:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self.std, dtype=x.dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "reverse_channels": self.reverse_channels}


@keras.saving.register_keras_serializable(package="autotl")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of a sequence over its real (unpadded) positions: ``(B, T, D), (B, T) -> (B, D)``."""

    def call(self, sequence, padding_mask):
        mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
        total = ops.sum(sequence * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])


@keras.saving.register_keras_serializable(package="autotl")
class FirstTokenPooling(keras.layers.Layer):
    """The first position of a sequence (BERT's [CLS] token): ``(B, T, D) -> (B, D)``."""

    def call(self, sequence):
        return sequence[:, 0, :]

    def compute_output_shape(self, sequence_shape):
        return (sequence_shape[0], sequence_shape[-1])
