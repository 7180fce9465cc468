"""MkDocs hooks (mkdocs.yml): the README is the site's home page, and the configuration reference is
generated from the config models (loader/config.py) at every build, so it cannot drift from the code.
Each key's line says its type, its default and the comment beside it in the model."""

from __future__ import annotations

import inspect
import re
import typing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- config-reference -->"


def on_page_read_source(page: Any, config: Any) -> str | None:
    """The home page's source: the README, its links into docs/ made relative to the site."""
    if page.file.src_uri != "index.md":
        return None
    return (ROOT / "README.md").read_text(encoding="utf-8").replace("](docs/", "](")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return markdown.replace(MARKER, config_reference()) if MARKER in markdown else markdown


def config_reference() -> str:
    """Every key of the config file, model by model (a model used at several keys is shown once)."""
    from loader.config import LoaderConfig

    seen: dict[type[BaseModel], list[str]] = {}
    order: list[type[BaseModel]] = []

    def walk(model: type[BaseModel], path: str) -> None:
        if model in seen:
            seen[model].append(path)
            return
        seen[model] = [path]
        order.append(model)
        for name, field in model.model_fields.items():
            key = field.alias or name
            where = f"{path}.{key}" if path else key
            for inner in _models(field.annotation):
                walk(inner, f"{where}.<name>" if _is_mapping(field.annotation) else where)

    walk(LoaderConfig, "")
    out = []
    for model in order:
        paths = seen[model]
        title = "top level" if paths[0] == "" else f"`{paths[0]}`"
        out.append(f"### {title}\n")
        if len(paths) > 1:
            out.append("The same keys at " + ", ".join(f"`{p}`" for p in paths[1:]) + ".\n")
        doc = inspect.getdoc(model)
        if doc and model.__doc__:  # its own docstring, not BaseModel's
            out.append(doc + "\n")
        comments = _field_comments(model)
        out.append("| key | type | default | notes |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            if name == "config_path":
                continue  # set by the loader: where the config was read from
            key = field.alias or name
            note = comments.get(name, "").replace("|", "\\|")
            out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {note} |")
        out.append("")
    return "\n".join(out)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (`X`, `X | None`, `dict[str, X]`)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Annotated:  # StrictInt and the like: the type they constrain
        return _type_name(typing.get_args(annotation)[0])
    if annotation is timedelta:
        return "duration (`30s`, `5m`, `1h`)"
    if annotation is Decimal:
        return "decimal"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is dict:
        return f"mapping of name to {_type_name(args[1])}"
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + ", or null"
    if args:
        return " or ".join(_type_name(a) for a in args)
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "text", "int": "integer", "float": "number", "bool": "true/false"}.get(name, name)


def _default(field: Any) -> str:
    value = field.default
    if value is PydanticUndefined and field.default_factory is None:
        return "required"
    if value is PydanticUndefined:
        value = field.default_factory()
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        for unit, size in (("h", 3600), ("m", 60)):
            if seconds and seconds % size == 0:
                return f"`{seconds / size:g}{unit}`"
        return f"`{seconds:g}s`"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[]`" if not value else "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment on each field's line in the model's source (`name: type = default  # comment`)."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"^\s{4}(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match and match.group(1) in model.model_fields:
            found[match.group(1)] = match.group(2).strip()
    return found
