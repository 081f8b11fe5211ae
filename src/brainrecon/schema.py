"""The config schema (``workflow/schemas/config.schema.yaml``): the one home of every setting's default,
type and range.

:func:`defaults` gives a section's defaults; :func:`section_settings` fills and validates some of a
section's keys; :func:`build_settings` makes a stage's frozen settings object from them. The workflow's
full validation (the schema plus checks it cannot say) is :func:`brainrecon.config.validate_config`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the value."""


def _path_str(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _fill_defaults(schema: dict, inst):
    """Fill ``default`` values of object properties recursively (in place), map entries included
    (the objects of an ``additionalProperties`` schema, e.g. each ``regression.spaces.<space>``)."""
    if not isinstance(inst, dict) or schema.get("type") != "object":
        return
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in inst and "default" in sub:
            inst[key] = copy.deepcopy(sub["default"])
        if key in inst:
            _fill_defaults(sub, inst[key])
    entries = schema.get("additionalProperties")
    if isinstance(entries, dict):
        for key, value in inst.items():
            if key not in props:
                _fill_defaults(entries, value)


_SCHEMA_CACHE: dict[str, dict] = {}


def load_schema(path=SCHEMA_PATH) -> dict:
    key = str(path)
    if key not in _SCHEMA_CACHE:
        with open(path) as fh:
            _SCHEMA_CACHE[key] = yaml.safe_load(fh)
    return copy.deepcopy(_SCHEMA_CACHE[key])


def section_schema(section: str, schema: dict | None = None) -> dict:
    """The schema of a dotted config section (``"methods.takagi"``, ``"encoding.img2img"``; ``*`` = any
    entry of a map, e.g. ``"regression.spaces.*"``)."""
    node = schema or load_schema()
    for part in section.split("."):
        props = node.get("properties", {})
        if part == "*" and isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]  # the schema of every entry of a map
            continue
        if part not in props:
            raise KeyError(f"config schema has no section {section!r} (no {part!r}; has {sorted(props)})")
        node = props[part]
    return node


def defaults(section: str) -> dict:
    """The schema's defaults of a config section, filled recursively: the one home of every default
    (library code that runs outside the workflow, e.g. tests, builds its settings from these)."""
    out: dict = {}
    _fill_defaults(section_schema(section), out)
    return out


def section_settings(section: str, values=None) -> dict:
    """``values`` (a mapping of the section's keys) over the section's defaults, validated against the
    section's schema; a ``ConfigError`` names the key. What a stage's settings object is built from."""
    import jsonschema

    sub = section_schema(section)
    out = copy.deepcopy(dict(values or {}))
    _fill_defaults(sub, out)
    errors = sorted(jsonschema.Draft202012Validator(sub).iter_errors(out), key=lambda e: list(e.absolute_path))
    if errors:
        msgs = [f"config key {section}{'.' if e.absolute_path else ''}{_path_str(e.absolute_path) if e.absolute_path else ''}: "
                f"value {e.instance!r} is invalid: {e.message}" for e in errors]
        raise ConfigError("invalid settings:\n  " + "\n  ".join(msgs))
    return out


class SectionSettings:
    """Mixin of a stage's frozen settings dataclass for the config section named by its class attribute
    ``SECTION``: :meth:`from_mapping` (some of the section's keys, the rest the schema's defaults, validated)
    and :meth:`as_dict`."""

    SECTION = ""

    @classmethod
    def from_mapping(cls, values: Mapping | None = None):
        return build_settings(cls, cls.SECTION, values)

    def as_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def build_settings(cls, section: str, values: Mapping | None = None):
    """An instance of the frozen dataclass ``cls`` (a stage's settings object) from ``values`` over the
    schema's defaults of the config ``section`` (e.g. ``methods.takagi``), validated by the schema; the
    fields of ``cls`` are taken from the result. Keys that are neither fields of ``cls`` nor keys of the
    section raise ``ConfigError`` naming them."""
    import dataclasses

    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - set(section_schema(section).get("properties", {})))
    if unknown:
        raise ConfigError(f"unknown {section} setting(s) {unknown}; known: {sorted(names)}")
    full = section_settings(section, values)
    return cls(**{k: full[k] for k in names})
