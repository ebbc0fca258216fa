"""The `Backbone` plugin protocol.

A backbone plugin tells autotl four things about a pretrained network:

1. how to build it from a *weights source* (a hub handle, a local file or folder,
   or ``"none"`` for random initialisation);
2. how raw examples become model inputs (its `Preprocessor`);
3. its blocks, ordered from the input to the output, which is what
   "unfreeze depth k" means for it: the top ``k`` blocks are fine-tuned;
4. the ranges of the search space it proposes (`Backbone.search_space`).

The core never imports a plugin by name: plugins are found through the
``autotl.backbones`` entry-point group or loaded from a file (see
`autotl.backbones.registry`). A plugin is a subclass of `Backbone` (or an instance of one),
or a `BackboneFamily`: many backbones behind one prefix, named
``PREFIX:VARIANT`` (``keras:ConvNeXtTiny``), made on demand.

Contract of `Backbone.build`: the returned Keras model maps the preprocessor's
output to features, *including* any input normalisation, so the exported model
takes the same inputs as the search did:

* image plugins: float pixels in ``[0, 255]``, shape ``(batch, H, W, 3)`` ->
  a feature map ``(batch, h, w, channels)``;
* text plugins: the dict the text preprocessor yields (it must contain
  ``"padding_mask"``) -> a sequence ``(batch, length, hidden)``. Positions
  where the mask is 0 must not change the outputs at the others (true of any
  masked encoder): autotl crops trailing padding from batches.

A functional Keras model (not a subclassed one) lets autotl cut it between
blocks and cache what its frozen part computes (`autotl.cache.cut`,
`autotl.cache.source`); any other model is trained end to end.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from autotl.backbones.weights import describe_weights_source

IMAGE = "image"
TEXT = "text"
MODALITIES = (IMAGE, TEXT)


class Preprocessor(abc.ABC):
    """Turns raw examples (image arrays, strings) into model inputs, in numpy.

    It runs outside the Keras model so that the model stays backend-agnostic;
    its `config` goes into the export manifest and `save` writes whatever it
    needs (a vocabulary, say) next to the exported model.
    """

    @abc.abstractmethod
    def __call__(self, examples: Sequence[Any]) -> Any:
        """Return model inputs (an array, or a dict of arrays) for `examples`."""

    @abc.abstractmethod
    def config(self) -> dict:
        """A JSON-serialisable description, written to the export manifest."""

    def save(self, directory: Path) -> None:
        """Write the assets needed to rebuild this preprocessor into `directory`."""

    def graph_function(self):
        """Optional: this preprocessing as TensorFlow graph code, so that exports take raw inputs.

        Text preprocessors may return a callable mapping a ``tf.string`` tensor of shape
        ``(N,)`` to the model's inputs (a dict of tensors, cast to the model's dtypes by
        the caller), usable inside a ``tf.function`` and trackable by TensorFlow (a Keras
        layer, such as a keras-hub preprocessor). The SavedModel export then tokenizes
        inside its ``serving_default`` signature. ``None`` (the default): exports take the
        model's inputs. Called only on Keras' TensorFlow backend, at export time. Image
        preprocessing needs none: autotl resizes inside image exports itself.
        """
        return None


class ImagePreprocessor(Preprocessor):
    """Images arrive already decoded and resized by `autotl.data`, as uint8 arrays.

    Resizing happens when images are read (see `autotl.data.read_image`) and
    they stay uint8: the model's float32 input casts each batch, so the search
    never holds (or writes for its trial workers) a float copy four times the
    size. Normalisation is part of the model.
    """

    def __init__(self, image_size: tuple[int, int]):
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def __call__(self, examples):
        return np.asarray(examples)

    def config(self) -> dict:
        return {
            "type": "image",
            "image_size": list(self.image_size),
            "color_mode": "rgb",
            "resize": "bilinear",
            "input_range": [0, 255],
        }


class Backbone(abc.ABC):
    """Base class of backbone plugins. Subclass it and fill in the class attributes.

    Attributes:
        name: the name users type (``--backbone NAME``); lowercase, no spaces.
        modality: ``"image"`` or ``"text"``.
        description: one line shown by ``autotl plugins``.
        default_weights: the weights source used when the user gives none.
        default_image_size: (image plugins) the input size used unless
            ``--image-size`` says otherwise.
        default_sequence_length: (text plugins) likewise for ``--sequence-length``.
        default_finetune_epochs: the fine-tuning phase's epochs unless ``--finetune-epochs`` says
            otherwise (at most ``--epochs``); None: ``--epochs``. Pretrained transformers need
            few (BERT's authors fine-tune for 2-4); the learning-rate schedule spans them.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    description: ClassVar[str] = ""
    default_weights: ClassVar[str] = "none"
    default_image_size: ClassVar[tuple[int, int]] = (224, 224)
    default_sequence_length: ClassVar[int] = 128
    default_finetune_epochs: ClassVar[int | None] = None

    @abc.abstractmethod
    def build(self, weights: str, preprocessor: Preprocessor):
        """Build the pretrained feature extractor (see the module docstring)."""

    @abc.abstractmethod
    def blocks(self, model) -> list[list]:
        """The model's blocks from input to output, each a list of Keras layers.

        ``unfreeze_depth = k`` makes the layers of the last ``k`` blocks trainable
        (BatchNormalization layers excepted: they stay frozen, in inference mode).
        """

    def preprocessor(self, weights: str, options: Mapping[str, Any]) -> Preprocessor:
        """The preprocessor for this weights source.

        `options` carries the user's ``image_size`` or ``sequence_length``.
        Image plugins need not override this.
        """
        if self.modality == IMAGE:
            size = options.get("image_size") or self.default_image_size
            return ImagePreprocessor(size)
        raise NotImplementedError(f"{self.name}: text plugins must define preprocessor()")

    def load_preprocessor(self, directory: Path, config: Mapping[str, Any]) -> Preprocessor:
        """Rebuild the preprocessor saved by `Preprocessor.save` in an export."""
        if self.modality == IMAGE:
            return ImagePreprocessor(tuple(config["image_size"]))
        raise NotImplementedError(f"{self.name}: text plugins must define load_preprocessor()")

    def search_space(self, weights: str) -> dict:
        """Overrides of the default search space (see `autotl.search.space`) for the weights
        source `weights`, e.g. ``{"unfreeze_depth": {"min": 0, "max": 3}}``. Without one,
        unfreeze depth takes 0, 1, 2, and a quarter, half, three quarters and all of the
        blocks (see `autotl.search.space.depth_grid`).
        It depends on its argument only: autotl may call it before or after the others."""
        return {}

    def describe_weights(self, weights: str) -> str:
        """A stable identity for a weights source, recorded with each search
        (``weights_identity`` in its config).

        Local files and folders are identified by their path and their files'
        names, sizes and modification times, so a changed file yields a new identity.
        """
        return describe_weights_source(weights)


class BackboneFamily(abc.ABC):
    """Many backbones behind one prefix: ``--backbone PREFIX:VARIANT``.

    A family makes the `Backbone` for a variant on demand, so that a whole
    catalogue (every `keras.applications` model, any keras-hub preset) is
    available without one plugin class per network. The backbone it returns
    is named ``PREFIX:`` and the family's own spelling of the variant
    (``keras:ConvNeXtTiny`` for ``keras:convnexttiny``, a folder's absolute
    path): that name is stored with the search and looked up again by trial
    workers, exports and ``autotl predict``, so `backbone` must accept it too.

    Attributes:
        prefix: what comes before the colon; lowercase, no spaces or colons.
        description: one line shown by ``autotl plugins``.
    """

    prefix: ClassVar[str]
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def variants(self) -> list[str]:
        """The variants to list in ``autotl plugins`` (a family may accept others, e.g. a folder)."""

    @abc.abstractmethod
    def backbone(self, variant: str) -> Backbone:
        """The backbone for `variant`, named ``PREFIX:...``; raise `autotl.errors.AutotlError` for an unknown one."""

