"""How each phase of a trial trains: optimizer, learning-rate schedule and loss.

The defaults follow the fine-tuning literature, as AutoGluon-multimodal's and the BERT and
timm recipes do:

* AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), not applied to biases
  and normalisation scales, which decay would only pull towards zero;
* a linear warm-up over the first `warmup` fraction of the phase's steps, then cosine decay
  to zero over the rest (each phase restarts it: the fine-tuning phase warms up its newly
  unfrozen blocks gently, the reason warm-up exists);
* label smoothing (Szegedy et al., 2016), which keeps the softmax from growing over-confident
  on a few hundred labels;
* layer-wise learning-rate decay (Howard & Ruder, 2018; Clark et al., 2020), off until measured
  (``lr_decay: 1``): with ``lr_decay`` d < 1 a fine-tune trains its top unfrozen block at the
  rate, the block below at d times it, the next at d squared..., so that the lower, more general
  blocks move least. AutoGluon-multimodal fine-tunes with d = 0.9.

Each is a hyperparameter of the search space (`autotl.search.space`), fixed by default: a
space file switches one off (``label_smoothing: 0``, ``optimizer: adam``, ``lr_schedule:
constant``) or tunes it. Trials of searches from before these existed have none of them, and
train with the previous recipe: Adam at a constant rate, without smoothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import keras

# Variables whose names hold one of these are not decayed: biases, and the scales and
# offsets of normalisation layers (gamma / beta).
NO_DECAY = ["bias", "gamma", "beta"]


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup: float = 0.0  # fraction of a phase's steps
    label_smoothing: float = 0.0
    lr_decay: float = 1.0  # layer-wise: each trainable block below the top trains at this times the one above

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Recipe":
        """The recipe of a trial's hyperparameter values; a missing one takes the previous recipe's value."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def optimizer_for(self, learning_rate: float, total_steps: int,
                      blocks: list[list] = ()) -> keras.optimizers.Optimizer:
        """The phase's optimizer. `blocks`: the variables of each trainable block of the backbone, top block
        first, for layer-wise decay; the head, and any variable outside them, trains at the rate itself."""
        rate = self.learning_rate(learning_rate, total_steps)
        scales = self.rate_scales(blocks)
        if self.optimizer == "adam":
            return LayerwiseAdam(rate, rate_scales=scales) if scales else keras.optimizers.Adam(rate)
        if scales:
            optimizer = LayerwiseAdamW(rate, weight_decay=self.weight_decay, rate_scales=scales)
        else:
            optimizer = keras.optimizers.AdamW(rate, weight_decay=self.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        return optimizer

    def rate_scales(self, blocks: list[list]) -> dict[int, float]:
        """``id(variable)`` -> its factor on the rate, for the variables of `blocks` (top first) whose factor
        is not 1: ``lr_decay ** k`` in the k-th block below the top."""
        if self.lr_decay == 1.0:
            return {}
        return {id(variable): self.lr_decay ** k for k, block in enumerate(blocks) for variable in block if k}

    def learning_rate(self, peak: float, total_steps: int):
        """`peak`, constant; or warmed up to `peak` then decayed to 0 by the end of `total_steps`."""
        if self.lr_schedule == "constant":
            return peak
        warmup_steps = int(round(self.warmup * total_steps))
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else peak, decay_steps=max(1, total_steps - warmup_steps),
            warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)

    def loss(self, num_classes: int):
        if not self.label_smoothing:
            return "sparse_categorical_crossentropy"
        return SmoothedSparseCrossentropy(num_classes, self.label_smoothing)


class LayerwiseRates:
    """Mixed into a Keras optimizer: each variable trains at the schedule's rate times its factor in
    `rate_scales` (``id`` of the variable -> factor; 1 when absent). Keras' optimizers take one rate for
    all the variables they train.

    AdamW's decoupled weight decay keeps the unscaled rate: at the default 0.01, a decay of 1e-6 of each
    weight per step at most, a difference no fine-tune here shows.
    """

    def __init__(self, *args, rate_scales: dict[int, float], **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_scales = dict(rate_scales)
        self.scale_by_index: list[float] = []

    def build(self, variables):
        super().build(variables)
        self.scale_by_index = [self.rate_scales.get(id(variable), 1.0) for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        from autotl.workarounds import optimizer_variable_index

        scale = self.scale_by_index[optimizer_variable_index(self, variable)]
        return super().update_step(gradient, variable, learning_rate if scale == 1.0 else learning_rate * scale)


class LayerwiseAdam(LayerwiseRates, keras.optimizers.Adam):
    pass


class LayerwiseAdamW(LayerwiseRates, keras.optimizers.AdamW):
    pass


class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy against integer labels with label smoothing, which Keras offers only for one-hot labels."""

    def __init__(self, num_classes: int, smoothing: float, name: str = "smoothed_sparse_crossentropy"):
        super().__init__(name=name)
        self.num_classes = num_classes
        self.smoothing = smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.smoothing)


def steps_in(examples: int, batch_size: int, epochs: int) -> int:
    return max(1, math.ceil(examples / batch_size) * epochs)
