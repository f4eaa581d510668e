"""Dagster run config derived from the library's parameter dataclasses, never copied field by field.

`config_from(DedupParams)` is a `dagster.Config` whose fields are DedupParams' fields with the same types and
defaults (the UI's launchpad shows them); `params_of(config, DedupParams)` turns a config back into the
dataclass. A default changes in one place: the dataclass.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

import pydantic
from dagster import Config


def _fields(params_cls, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict:
    """{name: (type, default)} of a dataclass's fields with a plain default (a field built by a
    default_factory, e.g. a nested parameter dataclass, is the caller's to set)."""
    hints = typing.get_type_hints(params_cls)
    return {prefix + f.name: (hints[f.name], f.default) for f in dataclasses.fields(params_cls)
            if f.name not in exclude and f.default is not dataclasses.MISSING}


def config_from(name: str, doc: str, *sources, extra: dict | None = None) -> type[Config]:
    """A Config class `name` with the fields of each source: a dataclass, or (dataclass, {"prefix": .., "exclude":
    (..)}), then `extra` fields {name: (type, default)}."""
    fields = {}
    for source in [*sources, (None, {"extra": extra or {}})]:
        cls, opts = source if isinstance(source, tuple) else (source, {})
        more = opts["extra"] if cls is None else _fields(cls, opts.get("prefix", ""), tuple(opts.get("exclude", ())))
        for field, (kind, default) in more.items():
            if field in fields and fields[field][1] != default:  # one name, two defaults: a setting defined twice
                raise ValueError(f"{name}.{field}: two sources give it the defaults {fields[field][1]!r} and {default!r}")
            fields[field] = (kind, default)
    module = sys._getframe(1).f_globals.get("__name__", __name__)
    return pydantic.create_model(name, __base__=Config, __doc__=doc, __module__=module, **fields)


def params_of(config: Config, params_cls, prefix: str = "", **overrides):
    """The dataclass `params_cls` from `config`'s fields of the same names (after `prefix`), then `overrides`."""
    values = config.model_dump()
    names = {f.name for f in dataclasses.fields(params_cls)}
    kwargs = {n: values[prefix + n] for n in names if prefix + n in values}
    return params_cls(**{**kwargs, **overrides})
