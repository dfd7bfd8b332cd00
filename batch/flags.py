"""Command-line flags generated from the pydantic configs: one source for names, types, help and defaults.

Every field of a config class becomes a flag (``--batch-size`` for ``batch_size``; nested configs
get their field's prefix, ``--decode-max-pixels``), typed from its annotation, with the field's
description and default in its help. A flag that is not given passes nothing, so the config's own
default applies: defaults live only in the config classes.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

UNSET = None  # a flag not given


def add_flags(
    parser: argparse.ArgumentParser | Any,
    config: type[BaseModel],
    *,
    prefix: str = "",
    renames: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
    flatten: tuple[str, ...] = (),
    group_titles: dict[str, str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Add a flag per field of ``config`` (recursing into nested configs); returns ``{dest: path}``,
    the field each flag's value goes to (``path``: field names from ``config`` down).
    ``renames``: field path ("a.b") -> flag name without dashes. ``skip``: field paths left out.
    ``flatten``: nested configs whose fields are flags without the nested field's name as prefix."""
    renames = renames or {}
    group_titles = group_titles or {}
    targets: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...], into) -> None:
        for name, field in model.model_fields.items():
            key = ".".join((*path, name))
            if key in skip:
                continue
            annotation = _unwrap_optional(field.annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not SecretStr:
                title = group_titles.get(key)
                walk(annotation, (*path, name), parser.add_argument_group(title) if title else into)
                continue
            shown = [part for i, part in enumerate(path) if ".".join(path[: i + 1]) not in flatten]
            flag = renames.get(key) or (prefix + "-".join((*shown, name))).replace("_", "-")
            dest = "cfg__" + "__".join((*path, name))
            _add(into, flag, dest, field, annotation)
            targets[dest] = (*path, name)

    walk(config, (), parser)
    return targets


def values(args: argparse.Namespace, targets: dict[str, tuple[str, ...]]) -> dict:
    """The nested mapping of the flags that were given (for ``Config.model_validate``)."""
    mapping: dict = {}
    for dest, path in targets.items():
        value = getattr(args, dest, UNSET)
        if value is UNSET:
            continue
        node = mapping
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return mapping


def _add(parser, flag: str, dest: str, field, annotation) -> None:
    required = field.is_required()
    help_text = " ".join(
        filter(None, [field.description, "(required)" if required else f"(default: {_shown_default(field)})"])
    )
    metavar = "N" if annotation in (int, float) else flag.rsplit("-", 1)[-1].upper()
    options = {"metavar": metavar, **_arg_options(annotation)}
    if required:
        options["required"] = True
    if options.get("type") is not None and _allows_bool(annotation):  # --compile alone means on
        options.update(nargs="?", const=True)
    if options.get("action") is argparse.BooleanOptionalAction:
        parser.add_argument(
            f"--{flag}", dest=dest, default=UNSET, help=help_text, action=argparse.BooleanOptionalAction
        )
        return
    if "choices" in options:
        options.pop("metavar")
    parser.add_argument(f"--{flag}", dest=dest, default=UNSET, help=help_text, **options)


def _allows_bool(annotation) -> bool:
    return bool in typing.get_args(annotation)


def _arg_options(annotation) -> dict:
    """argparse type/choices/action for a field's annotation."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args)}
    if annotation in (int, float, str):
        return {"type": annotation}
    if annotation is SecretStr:
        return {"type": str, "metavar": "SECRET"}
    if origin in (tuple, list):
        return {"type": _comma_separated, "metavar": "A,B,..."}
    if origin is dict or annotation is dict:
        return {"type": json.loads, "metavar": "JSON"}
    if origin in (typing.Union, types.UnionType):
        return {"type": _union_parser([_unwrap_annotated(a) for a in args]), "metavar": _union_metavar(args)}
    if origin is typing.Annotated:
        return _arg_options(args[0])
    raise TypeError(f"no command-line form for {annotation!r}")


def _union_parser(members: list):
    """A flag value for ``int | Literal["auto"]`` and the like: a literal, else the first type it parses as."""
    literals = [
        value for member in members if typing.get_origin(member) is Literal for value in typing.get_args(member)
    ]
    types_ = [member for member in members if member in (bool, int, float, str)]

    def parse(text: str):
        if text in literals:
            return text
        for kind in types_:
            if kind is bool:
                if text.lower() in ("true", "on", "yes", "1"):
                    return True
                if text.lower() in ("false", "off", "no", "0"):
                    return False
                continue
            try:
                return kind(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"expected {_union_metavar(members)}, got {text!r}")

    return parse


def _union_metavar(members) -> str:
    parts = []
    for member in members:
        member = _unwrap_annotated(member)
        if typing.get_origin(member) is Literal:
            parts.extend(str(v) for v in typing.get_args(member))
        elif member is not type(None):
            parts.append(getattr(member, "__name__", str(member)).upper())
    return "|".join(parts)


def _unwrap_annotated(annotation):
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _unwrap_optional(annotation):
    """``X | None`` -> ``X`` (a flag not given is already 'unset')."""
    annotation = _unwrap_annotated(annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _unwrap_annotated(rest[0])
        return typing.Union[tuple(rest)]
    return annotation


def _comma_separated(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _shown_default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see the flags below"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)
