"""Built-in backbone plugins, installed as the `autotl_plugins` package."""
