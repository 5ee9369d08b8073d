"""The one way every component reads its configuration: defaults, then a YAML file, then dotted
`key=value` overrides, validated against a typed, frozen schema.

    cfg = load(JudgeConfig, "judge.yaml", ["workers=8", "sandbox.limits.time_limit_s=2"])

A config crosses process boundaries (the supervisor writes each component's resolved config and
the component reads it back), so the loader lives with the protocol. Every problem raises
`ConfigError`, whose message names the field and, where the value came from a file, the file and
line: `recipe.yaml, line 12: learner.schedule.stages.0.steps: Input should be greater than 0`.
Unknown keys, duplicate YAML keys and overrides of fields that do not exist are errors.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every bad field."""


class Config(BaseModel):
    """Base of every config section: unknown fields are errors, and a loaded config never changes
    (values that vary during a run, such as a stage's learning rate, are passed as arguments)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=BaseModel)
Where = dict[tuple[str, ...], int | str]  # dotted key path -> its line in the file, or the override


def read_yaml(path: Path | str) -> tuple[dict[str, Any], Where]:
    """A YAML mapping and the line of every key in it; duplicate keys are refused."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()  # parsed once: the nodes give the lines, then the data
        data = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    where: Where = {}
    _walk(root, (), where, path)
    return data, where


def _walk(node: yaml.Node, prefix: tuple[str, ...], where: Where, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first:
                dotted = ".".join((*prefix, key))
                raise ConfigError(
                    f"{path}, line {line}: duplicate key {dotted} (first at line {first[key]}); "
                    "a YAML loader would silently keep only the last one"
                )
            first[key] = line
            where[(*prefix, key)] = line
            _walk(value_node, (*prefix, key), where, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            where[(*prefix, str(index))] = item.start_mark.line + 1
            _walk(item, (*prefix, str(index)), where, path)


def _field_type(schema: type[BaseModel], keys: list[str], text: str) -> Any:
    """The annotation of the field at `keys`, or an error naming the first key that does not exist."""
    annotation: Any = schema
    for depth, key in enumerate(keys):
        model = _model_in(annotation)
        if model is not None:
            if key not in model.model_fields:
                where = ".".join(keys[:depth]) or "the top level"
                known = ", ".join(model.model_fields)
                raise ConfigError(f"override {text!r}: no field {key!r} in {where} (fields: {known})")
            annotation = model.model_fields[key].annotation
            continue
        origin = typing.get_origin(annotation)
        if origin in (list, tuple) and key.isdigit():
            annotation = typing.get_args(annotation)[0]
            continue
        return Any  # a free-form mapping (engine args, DeepSpeed extras): anything goes below it
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _is_text(annotation: Any) -> bool:
    """Is this a str or Path field (addresses, paths, names), whose value is kept as typed?"""
    if annotation in (str, Path):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (str, Path) for a in args)
    return False


def parse_override(text: str, schema: type[BaseModel]) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value). The value is read as YAML (numbers, booleans,
    lists keep their type), except for text fields: `generator_id=007` stays "007"."""
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not key.strip() or any(not part for part in keys):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=1e-6")
    annotation = _field_type(schema, keys, text)
    if _is_text(annotation) and raw.strip() not in ("null", "~"):
        return keys, raw
    try:
        return keys, (yaml.safe_load(raw) if raw.strip() else None)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None


def _set(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for depth, part in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not in the list")
            node = node[int(part)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, dict | list):
            raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {text!r}: {'.'.join(keys)} is not in the list")
        node[int(last)] = value
    else:
        node[last] = value


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, mappings merged key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def substitute(value: Any, names: Mapping[str, str]) -> Any:
    """Replace ${NAME} in every string of a nested structure (paths of things built at start)."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    return value


def describe(exc: ValidationError, source: str = "", where: Where | None = None) -> str:
    """One line per bad field: its dotted name, the problem, the value, and its file and line."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        message = error["msg"]
        # A check of a whole section names the field it is about ("token_file: ..."): say it in full.
        named, colon, rest = message.removeprefix("Value error, ").partition(": ")
        if message.startswith("Value error, ") and colon and named.isidentifier():
            loc, message = (*loc, named), rest
        field = ".".join(loc) or "(top level)"
        got = f" (got {error['input']!r})" if error["type"] != "missing" and "input" in error else ""
        place = source
        if where:
            line = next((where[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in where), None)
            if isinstance(line, str):
                place = line
            elif line is not None:
                place = f"{source}, line {line}"
        lines.append((f"{place}: " if place else "") + f"{field}: {message}{got}"[:500])
    return "\n".join(lines)


def load(
    schema: type[C],
    path: Path | str | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | Callable[[dict[str, Any]], Mapping[str, str]] | None = None,
) -> C:
    """Defaults <- `base` <- the YAML file at `path` <- `overrides`, with ${NAME} replaced from
    `names` (or from what `names(data)` returns for the merged data), validated against `schema`."""
    data: dict[str, Any] = dict(base or {})
    where: Where = {}
    if path is not None:
        loaded, where = read_yaml(path)
        data = merge(data, loaded)
    for text in overrides:
        keys, value = parse_override(text, schema)
        _set(data, keys, value, text)
        where[tuple(keys)] = f"override {text}"  # the value no longer comes from the file
    if callable(names):
        names = names(data)
    if names:
        data = substitute(data, names)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, str(path) if path is not None else "", where)) from None


def replace(config: C, **changes: Any) -> C:
    """A validated copy of a frozen config with top-level fields changed."""
    try:
        return type(config).model_validate({**config.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def fields_help(schema: type[BaseModel], prefix: str = "") -> str:
    """Every field of `schema` as `dotted.name = default  description`, for a command's --help."""
    lines = []
    for name, info in schema.model_fields.items():
        dotted = f"{prefix}{name}"
        model = _model_in(info.annotation)
        if model is not None:
            lines.append(fields_help(model, f"{dotted}."))
            continue
        if info.is_required():
            default = "(required)"
        elif info.default_factory is not None:
            default = f"{info.default_factory.__name__}()"
        else:
            default = repr(info.default)
        described = f"  {info.description}" if info.description else ""
        lines.append(f"  {dotted} = {default}{described}")
    return "\n".join(line for line in lines if line)


def add_settings_arguments(
    parser: argparse.ArgumentParser, schema: type[BaseModel], *, config_required: bool = False
) -> None:
    """The arguments every command reads its settings with: --config FILE, --log-level and the
    dotted key=value overrides (taken apart by `parse_command_line`)."""
    from proto.logs import LEVELS

    parser.add_argument(
        "--config", type=Path, required=config_required, help=f"YAML file of {schema.__name__} fields"
    )
    parser.add_argument("--log-level", default="info", choices=LEVELS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the config")


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Flags and `key=value` overrides in any order (argparse alone stops collecting positionals
    at the first flag); the overrides end up in `args.overrides`."""
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*getattr(args, "overrides", []), *rest]
    return args


def dump(config: BaseModel, only_set: bool = False) -> str:
    """YAML of every field, or with `only_set` of those a file or an override set: loaded again,
    it tells a value that was asked for from a default (`model_fields_set`)."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_unset=only_set), sort_keys=False)
