"""ResNet50 from `keras.applications`, without its classification top.

The same network as ``keras:ResNet50`` (see `keras_applications`), under its
own name; kept as the built-in image backbone the README and earlier searches name.

Weights: ``imagenet`` (Keras downloads and caches them on first use), a local
weights file for the no-top network (e.g. Keras'
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, or one saved with
``model.save_weights``), or ``none`` for random initialisation. Input: Caffe
style (BGR, ImageNet mean removed, no scaling), inside the model.

Blocks from the bottom: the stem (conv1 + pool1), then the 16 residual blocks
``conv2_block1`` ... ``conv5_block3``; unfreeze depth k fine-tunes the last k
residual blocks (``conv5_block3`` first).
"""

from __future__ import annotations

from autotl_plugins.keras_applications import KerasApplication


class ResNet50(KerasApplication):
    name = "resnet50"
    description = "ResNet50 (keras.applications): weights imagenet | local file | none"

    def __init__(self):
        super().__init__("ResNet50", name=self.name, description=self.description)
