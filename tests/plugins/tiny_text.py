"""A tiny text backbone for fast tests: UTF-8 bytes as tokens, an embedding and one dense block.

No weights and no tokenizer to load, so a text search (or a text dataset error)
costs no more than the Keras import. Use it with ``--plugin tests/plugins/tiny_text.py``.
"""

from __future__ import annotations

import keras
import numpy as np

from autotl.backbones import Backbone, Preprocessor

VOCABULARY = 258  # 0 padding, 1 start, 2 + byte value


class ByteTokens(Preprocessor):
    """Strings -> ``{"token_ids", "padding_mask"}``, int32 ``(N, L)``: a start token, then the bytes."""

    def __init__(self, sequence_length: int):
        self.sequence_length = int(sequence_length)

    def __call__(self, examples):
        if isinstance(examples, str):
            examples = [examples]
        ids = np.zeros((len(examples), self.sequence_length), "int32")
        for row, text in enumerate(examples):
            tokens = [1] + [2 + b for b in str(text).encode("utf-8")][: self.sequence_length - 1]
            ids[row, : len(tokens)] = tokens
        return {"token_ids": ids, "padding_mask": (ids > 0).astype("int32")}

    def config(self) -> dict:
        return {"type": "text", "tokenizer": "bytes", "sequence_length": self.sequence_length}


class TinyText(Backbone):
    name = "tiny_text"
    modality = "text"
    description = "byte embeddings and one dense block (tests)"
    default_weights = "none"
    default_sequence_length = 16

    def preprocessor(self, weights, options):
        return ByteTokens(options.get("sequence_length") or self.default_sequence_length)

    def load_preprocessor(self, directory, config):
        return ByteTokens(config["sequence_length"])

    def build(self, weights, preprocessor):
        length = preprocessor.sequence_length
        token_ids = keras.Input((length,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((length,), dtype="int32", name="padding_mask")
        x = keras.layers.Embedding(VOCABULARY, 8, name="block0_embedding")(token_ids)
        x = keras.layers.Dense(8, activation="relu", name="block1_dense")(x)
        # Position by position: padding never changes the outputs at real tokens, so the mask is unused.
        model = keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, x, name="tiny_text")
        if weights != "none":
            model.load_weights(weights)
        return model

    def blocks(self, model):
        return [[layer for layer in model.layers if layer.name.startswith(f"block{i}_")] for i in range(2)]
