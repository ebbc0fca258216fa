"""A search's first stage: the backbone, its preprocessor, the data and the search space, from the
user's options, with every check that needs them made before any trial (a bad weights source, a
space file that does not fit the backbone, a precision the backend cannot run), and a warning for
a backbone whose frozen features cannot teach a head anything.
"""

from __future__ import annotations

from autotl.backbones.registry import Registry
from autotl.config import Prepared, SearchConfig, load_split
from autotl.errors import AutotlError, UsageError, first_line
from autotl.search import space as space_module


def prepare(config: SearchConfig, registry: Registry) -> Prepared:
    """The backbone and its preprocessor, the data, and the search space: every check of the user's input
    that needs them, before any trial."""
    backbone = registry.get(config.backbone)
    weights = config.weights or backbone.default_weights
    user_space = space_module.load_space_file(config.space_file) if config.space_file else None
    options = {"image_size": _image_size(config.image_size), "sequence_length": config.sequence_length}
    preprocessor = backbone.preprocessor(weights, options)
    # After the preprocessor: a plugin may size its proposals (e.g. BERT's layer count) by the weights.
    # Checked before the data load and the backbone build, so that a bad space file fails fast;
    # built again once the backbone's block count sets the default depths.
    space_module.build_space(backbone.modality, backbone.search_space(weights), user_space)
    train, val = load_split(config, backbone.modality, preprocessor)
    blocks, spread = _check_build(backbone, weights, preprocessor, train.examples[:FEATURE_SAMPLE])
    space = space_module.build_space(backbone.modality, backbone.search_space(weights), user_space, blocks=blocks)
    if user_space and "unfreeze_depth" in user_space:  # a plugin's own range may exceed them: it is capped
        space_module.check_depth_within(space, blocks, backbone.name)
    _check_precision(config.precision)
    return Prepared(backbone, weights, options, preprocessor, space, train, val, notes=_feature_notes(spread))


# Frozen features that vary less than this between examples teach a head nothing: every trial would sit at
# the loss of a uniform guess (``keras:MobileNetV3Small --weights none`` gives features of about 1e-10).
NEAR_CONSTANT = 1e-6
FEATURE_SAMPLE = 16  # training examples the backbone's features are measured on, once, before the search


def _feature_notes(spread: float | None) -> tuple[str, ...]:
    if spread is None or spread >= NEAR_CONSTANT:
        return ()
    return (f"warning: the backbone's frozen features hardly differ between examples (largest spread {spread:.1g} "
            f"on {FEATURE_SAMPLE} training examples): a head cannot learn from them; check --weights (a model "
            "without its trained weights gives such features)",)


def _check_build(backbone, weights, preprocessor, examples) -> tuple[int, float | None]:
    """Build the backbone once before the search, so a bad weights source fails fast in one line;
    returns its number of blocks and the spread of its features on `examples` (`feature_spread`)."""
    try:
        model = backbone.build(weights, preprocessor)
        blocks = backbone.blocks(model)
    except AutotlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, reported in one line
        raise AutotlError(f"backbone {backbone.name!r} failed to build from weights {weights!r}: "
                          f"{first_line(exc)}") from None
    if not blocks:
        raise AutotlError(f"backbone {backbone.name!r} reports no blocks to fine-tune")
    from autotl.search.hypermodel import fresh_inputs

    try:
        fresh_inputs(model)
    except AutotlError as exc:
        raise AutotlError(f"backbone {backbone.name!r}: {exc}") from None
    spread = feature_spread(model, preprocessor(examples))
    del model
    import keras

    keras.utils.clear_session()
    return len(blocks), spread


def feature_spread(model, inputs) -> float | None:
    """The largest standard deviation, across the examples of `inputs`, of any one of `model`'s output values;
    None where the model does not run on them here (its trials will say why, in their own words)."""
    import keras
    import numpy as np

    try:
        outputs = keras.tree.flatten(model(inputs, training=False))
    except Exception:  # noqa: BLE001 - a warning's measurement must not stop a search
        return None
    arrays = [np.asarray(keras.ops.convert_to_numpy(output), "float64") for output in outputs]
    arrays = [array.reshape(len(array), -1) for array in arrays if array.ndim and len(array) > 1]
    return max((float(array.std(axis=0).max()) for array in arrays if array.size), default=None)


def _check_precision(precision: str) -> None:
    """Run one small layer under the dtype policy, so an unsupported one fails before any trial."""
    if precision == "float32":
        return
    import keras
    import numpy as np

    from autotl.search.runner import dtype_policy

    try:
        with dtype_policy(precision):
            keras.ops.convert_to_numpy(keras.layers.Dense(2)(np.ones((1, 2), "float32")))
    except Exception as exc:  # noqa: BLE001 - the backend's refusal, in one line
        raise UsageError(f"precision {precision} does not run on the {keras.backend.backend()} backend here: "
                         f"{first_line(exc)}") from None


def _image_size(value: int | None):
    return None if value is None else (int(value), int(value))
