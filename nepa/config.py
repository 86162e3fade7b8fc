"""Strict conversion between plain dicts (YAML/JSON) and frozen config dataclasses.

Every component owns one frozen, keyword-only dataclass. This module turns untrusted nested
dicts into those dataclasses, rejecting every unknown key by its dotted path with a "did you
mean" suggestion and checking every value's type, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from nepa.errors import NepaError

T = TypeVar("T")


class ConfigError(NepaError, ValueError):
    """A config value or key is wrong; the message names the dotted path and the fix."""


MAX_YAML_BYTES = 1 << 20  # a config, spec or profile is a few KiB
MAX_YAML_VALUES = 100_000  # scalars and collections after expanding aliases


def load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load with bounds: the text's size and the document's size once its aliases are
    expanded (an "alias bomb" of nested aliases is tiny on disk and exponential in memory for
    whoever walks it). yaml.YAMLError for bad syntax, ConfigError over a bound."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text) / 2**20:.1f} MiB of YAML, over the {MAX_YAML_BYTES >> 20} MiB "
                          "a config may hold; check that this is the file you meant")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its YAML aliases (*name) expand to over {MAX_YAML_VALUES} values; "
                              "write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply; flatten it") from None
    finally:
        loader.dispose()


def _expanded_size(node: Any, seen: dict[int, int]) -> int:
    """Values in the document under `node` with every alias expanded (memoised per node)."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = 1  # a node reached again while being counted: counted once
    if isinstance(node.value, list):
        items = [part for pair in node.value for part in pair] if node.id == "mapping" else node.value
        size = 1
        for item in items:
            size += _expanded_size(item, seen)
            if size > MAX_YAML_VALUES:
                break
        seen[id(node)] = size
    return seen[id(node)]


def _where(path: str, source: str | None) -> str:
    return f"{path} (in {source})" if source else path


def unknown_key(dotted: str, key: str, fields: typing.Iterable[str], source: str | None) -> ConfigError:
    """The error for a key that is not a field: dotted path, suggestion, the known keys."""
    fields = sorted(fields)
    return ConfigError(f"{_where(dotted, source)}: unknown key{suggest(str(key), fields)}; "
                       f"known keys: {', '.join(fields)}")


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value: Any, tp: Any, path: str, source: str | None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1] if len(errors) == 1 else ConfigError(
            f"{_where(path, source)}: expected {' or '.join(_type_name(o) for o in options)}, "
            f"got {value!r}"
        )
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{_where(path, source)}: {value!r} is not one of "
                f"{', '.join(repr(a) for a in allowed)}"
                + (suggest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else "")
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(path, source)}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path=path, source=source)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path, source)}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(
                    f"{_where(path, source)}: expected {len(args)} items, got {len(value)}"
                )
            items = [_convert(v, a, f"{path}[{i}]", source) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(path, source)}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _convert(k, key_tp, path, source): _convert(v, val_tp, f"{path}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(path, source)}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(path, source)}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(path, source)}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path, source)}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def from_dict(cls: type[T], data: dict[str, Any], *, path: str = "", source: str | None = None) -> T:
    """Build `cls` from `data`, strictly: unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise unknown_key(dotted, key, fields, source)
        kwargs[key] = _convert(value, hints[key], dotted, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{_where(path or cls.__name__, source)}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (lists for tuples) ready for YAML/JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def parse_names(text: str, choices: typing.Sequence[str], *, flag: str, kind: str, example: str,
                extra: str = "") -> tuple[str, ...]:
    """A comma-separated list of known names (order kept, repeats dropped); one clear error."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in choices:
            raise ConfigError(f"{flag}: unknown {kind} '{name}'{suggest(name, choices)}; "
                              f"{kind}s: {', '.join(choices)}{extra}")
    if not names:
        raise ConfigError(f"{flag}: name at least one {kind}, e.g. {flag} {example}")
    return names


def check(condition: bool, path: str, message: str) -> None:
    """Raise ConfigError for a failed cross-field check, naming the dotted field."""
    if not condition:
        raise ConfigError(f"{path}: {message}")


def check_keys(cls: type, data: Any, *, path: str = "", source: str | None = None) -> None:
    """Reject unknown keys of a partial layer (no construction, so no cross-field checks)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(path or 'top level', source)}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise unknown_key(dotted, key, fields, source)
        tp = hints[key]
        options = [t for t in get_args(tp) if t is not type(None)] if get_origin(tp) in (
            Union, types.UnionType) else [tp]
        nested = [t for t in options if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            check_keys(nested[0], value, path=dotted, source=source)


def deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, recursing into mappings (lists and scalars are replaced)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
