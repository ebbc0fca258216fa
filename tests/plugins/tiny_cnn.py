"""A tiny image backbone for fast engine tests: three conv blocks, random or file weights.

It is also a complete example of a plugin file (``--plugin tests/plugins/tiny_cnn.py``).
"""

import keras

from autotl.backbones import Backbone
from autotl.backbones.layers import PixelNormalization


class TinyCNN(Backbone):
    name = "tiny_cnn"
    modality = "image"
    description = "three small conv blocks (tests)"
    default_weights = "none"
    default_image_size = (16, 16)

    def build(self, weights, preprocessor):
        height, width = preprocessor.image_size
        inputs = keras.Input((height, width, 3), name="image")
        x = PixelNormalization(mean=(127.5,) * 3, std=(127.5,) * 3, name="normalize")(inputs)
        for index, filters in enumerate((8, 16, 16)):
            x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{index}_conv")(x)
            x = keras.layers.BatchNormalization(name=f"block{index}_bn")(x)
            x = keras.layers.Activation("relu", name=f"block{index}_relu")(x)
            if index < 2:
                x = keras.layers.MaxPooling2D(name=f"block{index}_pool")(x)
        model = keras.Model(inputs, x, name="tiny_cnn")
        if weights != "none":
            model.load_weights(weights)
        return model

    def blocks(self, model):
        return [[layer for layer in model.layers if layer.name.startswith(f"block{i}_")] for i in range(3)]

    def search_space(self, weights):
        return {"unfreeze_depth": {"min": 0, "max": 2}}
