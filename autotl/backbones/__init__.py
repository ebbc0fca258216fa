"""Backbones: the plugin protocol, finding plugins, and the layers plugins and heads share.

A plugin imports what it needs from here::

    from autotl.backbones import IMAGE, Backbone
"""
from autotl.backbones.protocol import (IMAGE, MODALITIES, TEXT, Backbone, BackboneFamily, ImagePreprocessor,
                                       Preprocessor)
from autotl.backbones.weights import describe_weights_source

__all__ = ["IMAGE", "MODALITIES", "TEXT", "Backbone", "BackboneFamily", "ImagePreprocessor", "Preprocessor",
           "describe_weights_source"]
