"""autotl: transfer-learning search over pretrained backbone plugins."""

__version__ = "0.1.0"
