"""YAML <-> frozen dataclasses: parsing with checked keys and types, overrides, range checks.

A config is a tree of frozen dataclasses whose defaults are the documented ones. YAML
holds values only. ``from_dict`` builds a dataclass from a mapping and refuses an
unknown key or a value of the wrong type with a ``ConfigError`` naming the dotted key;
``check`` then walks the tree and lets each dataclass check its own ranges (its
``check(key)`` method, ``key`` being its dotted place in the tree). A family of configs
chosen by a ``type`` key (encoders) is a ``TaggedConfig`` whose members come from a
table in ``earshot.choices``.

>>> from earshot.config import DecodeConfig
>>> from_dict(DecodeConfig, {"beam_size": 4}).beam_size
4
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from earshot.errors import ConfigError

_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# Bounds on what a YAML text may make: configs are small, so these leave room to spare
# while refusing alias bombs ("billion laughs"), runaway nesting and huge files.
MAX_YAML_BYTES = 1_000_000
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings, every alias expanded
SHOWN_CHARS = 80


def shown(value: Any) -> str:
    """``repr(value)`` cut to ``SHOWN_CHARS`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 5] + " ...'"


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader refusing a key given twice in one mapping."""

    where = ""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise ConfigError(f"{self.where}:{key_node.start_mark.line + 1}: key "
                                      f"{shown(key)} given twice (first on line {first[key]})")
                first[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key; yaml itself refuses it below
                pass
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """The value of a YAML text, refusing (ConfigError naming ``where`` and the line)
    nesting deeper than ``MAX_YAML_DEPTH``, more than ``MAX_YAML_VALUES`` values once
    aliases are expanded, and duplicate keys. Only plain data is built (safe loading)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{where}:{event.start_mark.line + 1}: nested deeper than "
                                  f"{MAX_YAML_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    loader = _StrictLoader(text)
    loader.where = where
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_values(node) > MAX_YAML_VALUES:
            raise ConfigError(f"{where}: its aliases expand to more than {MAX_YAML_VALUES} "
                              f"values; a config does not need that many")
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as err:  # e.g. an integer of 10,000 digits
            raise ConfigError(f"{where}: a value yaml cannot build ({shown(str(err))})") from None
    finally:
        loader.dispose()


def _expanded_values(root: yaml.Node) -> int:
    """How many nodes the document holds with every alias expanded (each shared node is
    counted once per use), computed once per node, without recursion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(c), MAX_YAML_VALUES + 1) for c in children),
                                  MAX_YAML_VALUES + 1)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def require(ok: bool, key: str, reason: str) -> None:
    """A ConfigError "config key 'KEY': REASON" unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {reason}")


# Upper bounds on sizes, far beyond any model this toolkit trains, that stop a typo
# (units=1e8) from asking for tens of gigabytes before anything checks it.
MAX_WIDTH = 16384  # units, dims, channels
MAX_LAYERS = 128


def require_size(value: int, key: str, most: int = MAX_WIDTH, least: int = 1) -> None:
    """``value`` in [least, most] (a width, a count of layers)."""
    require(least <= value <= most, key, f"must be in [{least}, {most}], got {value}")


def dotted(prefix: str, name: str) -> str:
    """``name`` under ``prefix`` ("model.encoder" + "dim" -> "model.encoder.dim")."""
    return f"{prefix}.{name}" if prefix else name


class TaggedConfig:
    """Base of a family of configs chosen by their ``type`` key (e.g. ``model.encoder``).

    ``TABLE`` (an ``earshot.choices.Table``) names the members; the implementation each
    name loads carries its config dataclass as ``Config``, a frozen dataclass with a
    ``type`` field whose default is its name. ``from_dict`` picks the member from the
    mapping's ``type`` (default ``DEFAULT``) and accepts only that member's keys.
    """

    TABLE: ClassVar[Any] = None
    DEFAULT: ClassVar[str] = ""

    @classmethod
    def member(cls, name: str, key: str = "") -> type:
        """The config dataclass of member ``name``."""
        config = cls.TABLE.load(name, f"config key '{dotted(key, 'type')}'" if key else "").Config
        if not (isinstance(config, type) and issubclass(config, cls)):
            raise TypeError(f"{cls.TABLE.what} {name!r}: its Config is not a {cls.__name__}")
        return config

    @classmethod
    def default(cls) -> Any:
        """A default config of the family's default member."""
        return cls.member(cls.DEFAULT)()


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{where}': expected a mapping, got {type(data).__name__}"
                          if where else f"config: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{dotted(where, unknown[0])}' "
                          f"(valid keys here: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, dotted(where, name)) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, TaggedConfig) and not dataclasses.is_dataclass(tp):
        return _tagged(tp, value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {shown(value)} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {shown(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {shown(value)}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is dict or origin is dict:  # a free-form mapping (a third-party config)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {shown(value)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a string, got {shown(value)}")
        return str(value)
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _tagged(family: type, value: Any, key: str) -> Any:
    """The member of a tagged family named by ``value['type']`` (default: the family's)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}': expected a mapping, got {shown(value)}")
    name = value.get("type", family.DEFAULT)
    if not isinstance(name, str) or name not in family.TABLE:
        raise ConfigError(f"config key '{key}.type': unknown {family.TABLE.what} type {shown(name)} "
                          f"(known: {', '.join(sorted(family.TABLE))})")
    cls = family.member(name, key)
    names = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(value) - names)
    if foreign:
        owners = [t for t in family.TABLE
                  if foreign[0] in {f.name for f in dataclasses.fields(family.member(t))}]
        belongs = f"; it belongs to {family.TABLE.what} type {', '.join(owners)}" if owners else ""
        raise ConfigError(f"config key '{key}.{foreign[0]}' is not a key of {family.TABLE.what} "
                          f"type '{name}'{belongs} (valid keys for '{name}': "
                          f"{', '.join(sorted(names))})")
    return from_dict(cls, value, key)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def check(cfg: Any, key: str = "") -> None:
    """Range checks that types alone cannot express, over the whole tree under ``cfg``:
    at each dataclass, first that no number is nan or infinite, then the sections below
    it, then its own ``check(key)`` (which may look across its sections)."""
    for f in dataclasses.fields(cfg):
        value, where = getattr(cfg, f.name), dotted(key, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            at = f"{where}[{i}]" if isinstance(value, tuple) else where
            if isinstance(item, float):
                require(math.isfinite(item), at, f"must be a finite number, got {item}")
            elif dataclasses.is_dataclass(item):
                check(item, at)
    if hasattr(cfg, "check"):
        cfg.check(key)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {shown(item)} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, f"override {shown(key)}") if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {shown(item)}: value is not valid YAML ({err})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {shown(item)}: {shown(part)} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; a ConfigError naming the file when it is missing, too
    large, not text, not YAML (``parse_yaml``'s limits included), or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config is at most "
                          f"{MAX_YAML_BYTES} bytes")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                cls: type | None = None) -> Any:
    """Read YAML (or start from defaults), apply overrides, check into ``cls`` (default:
    ``ExperimentConfig``, the ASR training config)."""
    if cls is None:
        from earshot.config.asr import ExperimentConfig as cls
    data = read_yaml(path) if path is not None else {}
    if hasattr(cls, "upgrade"):  # an older layout of the same config
        data = cls.upgrade(data or {})
    data = apply_overrides(data, list(overrides))
    try:
        cfg = from_dict(cls, data)
        check(cfg)
    except ConfigError as err:  # named with the file it came from
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML, keys in declaration order."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for frozen configs."""
    return dataclasses.replace(cfg, **changes)
