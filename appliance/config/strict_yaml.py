"""Strict YAML → frozen dataclass conversion whose every error names the dotted key and line.

PyYAML only gives line numbers on nodes, so we compose the node tree and build the
dataclasses from it ourselves instead of converting a plain `dict` afterwards.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Leaf parsers: YAML scalar (already typed by the YAML resolver) → value, or ValueError.
Parser = Callable[[Any], Any]


class SchemaError(ValueError):
    """A config value that does not fit the schema: `key` is dotted, `line` 1-based."""

    def __init__(self, key: str, line: int, message: str) -> None:
        super().__init__(f"line {line}: {key or '<top level>'}: {message}")
        self.key = key
        self.line = line
        self.message = message


def check(fn: Callable[[Any], None]) -> dict[str, Callable[[Any], None]]:
    """Field metadata for a value check that raises ValueError with a reason."""
    return {"check": fn}


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the scalar {node.value!r}"


class Builder:
    """Walks a composed YAML node tree, recording the line of every dotted key it visits."""

    def __init__(self, loader: yaml.SafeLoader, scalars: Mapping[object, Parser]) -> None:
        self._loader = loader
        self._scalars = scalars
        self.lines: dict[str, int] = {}

    def build(self, tp: Any, node: yaml.Node, key: str) -> Any:
        self.lines.setdefault(key, _line(node))
        origin = typing.get_origin(tp)
        if tp in self._scalars:
            return self._scalar(tp, node, key)
        if origin in (types.UnionType, typing.Union):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if self._is_null(node):
                if len(args) == len(typing.get_args(tp)):
                    raise SchemaError(key, _line(node), "must not be null")
                return None
            (inner,) = args
            return self.build(inner, node, key)
        if self._is_null(node) and (dataclasses.is_dataclass(tp) or origin in (tuple, dict)):
            # `dns:` with every line below commented out means "all defaults".
            empty = yaml.MappingNode if origin is not tuple else yaml.SequenceNode
            node = empty(tag="", value=[], start_mark=node.start_mark, end_mark=node.end_mark)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(typing.cast(type[Any], tp), node, key)
        if origin is tuple:
            return self._tuple(typing.get_args(tp)[0], node, key)
        if origin is dict:
            key_tp, value_tp = typing.get_args(tp)
            return self._dict(key_tp, value_tp, node, key)
        raise TypeError(f"no YAML conversion for {tp!r} at {key}")  # a bug in the schema

    def _tuple(self, item_tp: Any, node: yaml.Node, key: str) -> tuple[Any, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise SchemaError(key, _line(node), f"expected a list, got {_kind(node)}")
        return tuple(self.build(item_tp, item, f"{key}[{i}]") for i, item in enumerate(node.value))

    def _dict(self, key_tp: Any, value_tp: Any, node: yaml.Node, key: str) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise SchemaError(key, _line(node), f"expected a mapping, got {_kind(node)}")
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            name = self._key_text(k_node, key)
            sub = f"{key}.{name}" if key else name
            k = self._scalar(key_tp, k_node, sub)
            if k in out:
                raise SchemaError(sub, _line(k_node), "duplicate key")
            out[k] = self.build(value_tp, v_node, sub)
        return out

    def _is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def _key_text(self, node: yaml.Node, parent: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise SchemaError(parent, _line(node), "mapping keys must be plain strings")
        return str(node.value)

    def _scalar(self, tp: object, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise SchemaError(key, _line(node), f"expected a single value, got {_kind(node)}")
        try:
            raw = self._loader.construct_object(node)
            return self._scalars[tp](raw)
        except (ValueError, TypeError, yaml.YAMLError) as e:
            raise SchemaError(key, _line(node), str(e)) from e

    def _dataclass(self, cls: type[Any], node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            raise SchemaError(key, _line(node), f"expected a mapping, got {_kind(node)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        given: dict[str, Any] = {}
        for k_node, v_node in node.value:
            name = self._key_text(k_node, key)
            sub = f"{key}.{name}" if key else name
            if name not in fields:
                hint = difflib.get_close_matches(name, fields, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                known = ", ".join(sorted(fields))
                raise SchemaError(sub, _line(k_node), f"unknown key{extra}; known keys: {known}")
            if name in given:
                raise SchemaError(sub, _line(k_node), "duplicate key")
            value = self.build(hints[name], v_node, sub)
            checker = fields[name].metadata.get("check")
            if checker is not None and value is not None:
                try:
                    checker(value)
                except ValueError as e:
                    raise SchemaError(sub, _line(v_node), str(e)) from e
            given[name] = value
        for name, f in fields.items():
            no_default = f.default is dataclasses.MISSING
            if name not in given and no_default and f.default_factory is dataclasses.MISSING:
                sub = f"{key}.{name}" if key else name
                raise SchemaError(sub, _line(node), "required key is missing")
        return cls(**given)


def load(cls: type[T], text: str, scalars: Mapping[object, Parser]) -> tuple[T, dict[str, int]]:
    """Build `cls` from YAML text; returns the value and the line of each dotted key."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            line = e.problem_mark.line + 1 if e.problem_mark else 0
            raise SchemaError("", line, f"invalid YAML: {e.problem}") from e
        if node is None:
            raise SchemaError("", 1, "the file is empty")
        builder = Builder(loader, scalars)
        return builder.build(cls, node, ""), builder.lines
    finally:
        loader.dispose()
