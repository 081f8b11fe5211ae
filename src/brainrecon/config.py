"""Config validation: JSON schema (defaults filled in) plus checks the schema cannot say.

Errors name the key path and the offending value, e.g.
``config key nsd.subjects[1]: NSD has no subject 9 (subjects are 1..8)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import yaml

from .nsd.layout import ALL_SUBJECTS, SESSIONS_PER_SUBJECT

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


def validate_config(config: dict, schema: dict | None = None, check_paths: bool = True) -> dict:
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError."""
    import jsonschema

    schema = schema or load_schema()
    # snakemake may hand us a wrapper; work on plain containers
    _fill_defaults(schema, config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        msgs = []
        for e in errors:
            where = _path_str(e.absolute_path)
            if e.validator == "required":
                missing = [k for k in e.validator_value if k not in e.instance]
                prefix = f"{where}." if e.absolute_path else ""
                for k in missing:
                    msgs.append(f"config key {prefix}{k}: missing (required)")
            elif e.validator == "additionalProperties":
                allowed = sorted(e.schema.get("properties", {}))
                extra = sorted(set(e.instance) - set(allowed))
                msgs.append(
                    f"config key {where}: unknown key(s) {', '.join(map(repr, extra))}; "
                    f"allowed: {', '.join(allowed)}"
                )
            else:
                msgs.append(f"config key {where}: value {e.instance!r} is invalid: {e.message}")
        try:
            _semantic_checks(config, check_paths=False)
        except ConfigError as more:
            msgs += str(more).splitlines()[1:]
        except Exception:  # malformed beyond what semantic checks can read
            pass
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(m.strip() for m in msgs))
    _semantic_checks(config, check_paths)
    return config


def _semantic_checks(config: dict, check_paths: bool) -> None:
    msgs = []
    for i, s in enumerate(config["nsd"]["subjects"]):
        if not isinstance(s, int) or isinstance(s, bool):
            continue  # the schema reports the type
        if s not in ALL_SUBJECTS:
            msgs.append(f"config key nsd.subjects[{i}]: NSD has no subject {s} (subjects are 1..8)")
        elif config["nsd"]["source"] == "bucket" and config["nsd"]["sessions"] > SESSIONS_PER_SUBJECT[s]:
            msgs.append(
                f"config key nsd.sessions: value {config['nsd']['sessions']} but NSD subject {s} "
                f"has only {SESSIONS_PER_SUBJECT[s]} sessions"
            )
    synth = config.get("synth", {})
    if config["nsd"]["source"] == "synthetic" and synth:
        if synth.get("n_shared", 0) >= synth.get("n_images", 1):
            msgs.append(
                f"config key synth.n_shared: value {synth['n_shared']} must be smaller than "
                f"synth.n_images ({synth['n_images']})"
            )
    if check_paths:
        for key, path in _declared_input_paths(config):
            if not Path(path).exists():
                msgs.append(f"config key {key}: path {path!r} does not exist")
    if msgs:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(msgs))


def _declared_input_paths(config: dict):
    """(key, path) of config values that must exist before the run (extended by later stages)."""
    out = []
    for section in ("models",):
        for role, spec in (config.get(section) or {}).get("local_paths", {}).items():
            out.append((f"{section}.local_paths.{role}", spec))
    return out


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
