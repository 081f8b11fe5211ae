"""Config validation: JSON schema (defaults filled in) plus checks the schema cannot say.

Errors name the key path and the offending value, e.g.
``config key nsd.subjects[1]: NSD has no subject 9 (subjects are 1..8)``. The schema itself, its
defaults and the settings objects built from it: :mod:`brainrecon.schema`.
"""

from __future__ import annotations

from pathlib import Path

from .nsd.layout import ALL_SUBJECTS, SESSIONS_PER_SUBJECT
from .schema import ConfigError, _fill_defaults, _path_str, load_schema

__all__ = ["ConfigError", "validate_config"]


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
        msgs = list(dict.fromkeys(m.strip() for m in msgs))  # a key missing under if/then branches too
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(msgs))
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
    from .nsd.rois import ROI_DEFINITIONS

    bd = config.get("methods", {}).get("braindiffuser", {})
    for i, name in enumerate(bd.get("roi_optimal") or []):
        if isinstance(name, str) and name not in ROI_DEFINITIONS:
            msgs.append(f"config key methods.braindiffuser.roi_optimal[{i}]: unknown ROI {name!r}; "
                        f"known: {', '.join(ROI_DEFINITIONS)}")
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
