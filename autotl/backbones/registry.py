"""Finding backbone plugins: the ``autotl.backbones`` entry points and plugin files.

A plugin is registered either by a package that declares an entry point::

    [project.entry-points."autotl.backbones"]
    my_net = "my_package.module:MyNet"

or by a Python file given with ``--plugin path/to/file.py`` that defines one or
more `Backbone` subclasses. An entry point may also name a `BackboneFamily`,
whose backbones are looked up as ``PREFIX:VARIANT`` and made on first use. A
plugin that fails to import is recorded with its error and reported by name;
the other plugins keep working.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterable

from autotl.backbones.protocol import MODALITIES, Backbone, BackboneFamily
from autotl.errors import AutotlError, UsageError, typed_first_line

ENTRY_POINT_GROUP = "autotl.backbones"


@dataclass
class PluginFailure:
    name: str
    source: str
    error: str


@dataclass
class Registry:
    backbones: dict[str, Backbone] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    families: dict[str, BackboneFamily] = field(default_factory=dict)
    family_sources: dict[str, str] = field(default_factory=dict)

    def listing(self) -> dict[str, list[dict]]:
        """What `autotl plugins` shows: the backbones, the families with their variants, the failures."""
        backbones = [{"name": name, "modality": b.modality, "default_weights": b.default_weights,
                      "source": self.sources[name], "description": b.description}
                     for name, b in sorted(self.backbones.items())]
        families = [{"name": f"{prefix}:NAME", "description": family.description,
                     "source": self.family_sources[prefix], "variants": family.variants()}
                    for prefix, family in sorted(self.families.items())]
        return {"backbones": backbones, "families": families, "failed": [vars(f) for f in self.failures]}

    def get(self, name: str) -> Backbone:
        if name in self.backbones:
            return self.backbones[name]
        prefix, colon, variant = name.partition(":")
        if colon:
            return self._from_family(prefix, variant)
        self._raise_failed(name)
        known = ", ".join([*sorted(self.backbones), *(f"{p}:NAME" for p in sorted(self.families))]) or "none"
        raise UsageError(f"unknown backbone {name!r} (available: {known}; one from a plugin file needs "
                          "--plugin FILE; see `autotl plugins`)")

    def _from_family(self, prefix: str, variant: str) -> Backbone:
        family = self.families.get(prefix)
        if family is None:
            self._raise_failed(prefix)
            known = ", ".join(f"{p}:NAME" for p in sorted(self.families)) or "none"
            raise UsageError(f"unknown backbone family {prefix!r} (families: {known}; see `autotl plugins`)")
        try:
            backbone = family.backbone(variant)
        except AutotlError:
            raise
        except Exception as exc:  # noqa: BLE001 - a third-party family's failure, in one line
            raise AutotlError(f"backbone family {prefix!r} ({self.family_sources[prefix]}) failed to make "
                              f"{variant!r}: {typed_first_line(exc)}") from None
        problem = _check_backbone(backbone)
        if problem is None and not backbone.name.startswith(f"{prefix}:"):
            problem = f"the family named its backbone {backbone.name!r}, not {prefix}:..."
        if problem:
            raise AutotlError(f"backbone family {prefix!r} ({self.family_sources[prefix]}): {problem}")
        # Under the name asked for and the family's own spelling of it (the one a search records).
        for name in {f"{prefix}:{variant}", backbone.name}:
            self.backbones[name] = backbone
            self.sources[name] = self.family_sources[prefix]
        return backbone

    def _raise_failed(self, name: str) -> None:
        failed = next((f for f in self.failures if f.name == name), None)
        if failed is not None:
            raise AutotlError(f"backbone plugin {name!r} failed to load from {failed.source}: {failed.error}")

    def add_family(self, family: BackboneFamily, source: str) -> None:
        prefix = getattr(family, "prefix", None)
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in ": "):
            self.failures.append(PluginFailure(str(prefix), source, "a backbone family needs a `prefix` "
                                                                     "without spaces or colons"))
            return
        self.families[prefix] = family
        self.family_sources[prefix] = source

    def add(self, backbone: Backbone, source: str) -> None:
        problem = _check_backbone(backbone)
        if problem:
            self.failures.append(PluginFailure(getattr(backbone, "name", "?"), source, problem))
            return
        # A plugin file given explicitly wins over an installed plugin of the same name.
        self.backbones[backbone.name] = backbone
        self.sources[backbone.name] = source


def check_installed(name: str) -> None:
    """Refuse a backbone that no installed plugin can provide, from the entry points' names alone (no import)."""
    installed = sorted({entry_point.name for entry_point in entry_points(group=ENTRY_POINT_GROUP)})
    prefix, colon, _ = name.partition(":")
    if (prefix if colon else name) in installed:
        return
    family = " family" if colon else ""
    example = "; a family's backbones are PREFIX:NAME, such as keras:NAME" if "keras" in installed else ""
    raise UsageError(f"unknown backbone{family} {(prefix if colon else name)!r} (installed plugins: "
                     f"{', '.join(installed) or 'none'}{example}; one from a plugin file needs --plugin FILE; "
                     "see `autotl plugins`)")


def load_registry(plugin_files: Iterable[str | Path] = ()) -> Registry:
    registry = Registry()
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        source = f"entry point {entry_point.value}"
        try:
            plugin = _instantiate(entry_point.load())
            if isinstance(plugin, BackboneFamily):
                registry.add_family(plugin, source)
            else:
                registry.add(plugin, source)
        except Exception as exc:  # noqa: BLE001 - any import error of a third-party plugin
            registry.failures.append(PluginFailure(entry_point.name, source, typed_first_line(exc)))
    for path in plugin_files:
        for backbone in load_plugin_file(path):
            registry.add(backbone, f"file {path}")
    return registry


def load_plugin_file(path: str | Path) -> list[Backbone]:
    """Import a plugin file and return an instance of each `Backbone` subclass it defines."""
    path = Path(path)
    if not path.is_file():
        raise AutotlError(f"plugin file not found: {path}")
    module_name = f"autotl_plugin_file_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AutotlError(f"cannot import plugin file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import-time failure in one line
        del sys.modules[module_name]
        raise AutotlError(f"plugin file {path} failed to import: {typed_first_line(exc)}") from None
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Backbone) and obj.__module__ == module_name]
    concrete = [cls for cls in classes if not inspect.isabstract(cls)]
    if not concrete:
        raise AutotlError(_no_backbone_message(path, classes))
    return [_instantiate_from_file(cls, path) for cls in concrete]


def _no_backbone_message(path: Path, classes: list[type]) -> str:
    if not classes:
        return (f"plugin file {path} defines no Backbone subclass: define one, "
                "e.g. `class MyNet(autotl.backbones.Backbone)` with a name, a modality, build() and blocks()")
    cls = classes[0]
    missing = ", ".join(f"{name}()" for name in sorted(cls.__abstractmethods__))
    them = "them" if len(cls.__abstractmethods__) > 1 else "it"
    return f"plugin file {path}: Backbone subclass {cls.__name__} does not define {missing}; implement {them}"


def _instantiate_from_file(cls: type, path: Path) -> Backbone:
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - a plugin's constructor failing, in one line
        raise AutotlError(f"plugin file {path}: {cls.__name__}() failed: {typed_first_line(exc)}") from None


def _instantiate(plugin) -> Backbone:
    if inspect.isclass(plugin):
        return plugin()
    return plugin


def _check_backbone(backbone) -> str | None:
    if not isinstance(backbone, Backbone):
        return f"{type(backbone).__name__} is not an autotl.backbones.Backbone"
    name = getattr(backbone, "name", None)
    if not isinstance(name, str) or not name or " " in name:
        return "a backbone needs a `name` without spaces"
    if getattr(backbone, "modality", None) not in MODALITIES:
        return f"modality must be one of {MODALITIES}"
    if not _takes_one_argument(backbone.search_space):
        return "search_space() must take the weights source: `def search_space(self, weights)`"
    return None


def _takes_one_argument(method) -> bool:
    try:
        inspect.signature(method).bind("weights")
    except TypeError:
        return False
    return True

