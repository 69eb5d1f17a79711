"""Typed configuration: frozen dataclasses, YAML in and out, command-line overrides, clear errors.

Every stage has one config class built from nested frozen dataclasses. Each field carries its help text
(``field(metadata={"help": ...})`` through :func:`option`). A config is made in exactly one way::

    cfg = load(SFTConfig, "configs/demo.yaml", ["train.lr=3e-3", "model.layers=2"])

which reads the YAML, applies ``dotted.key=value`` overrides (values parsed as YAML scalars), checks every
key and type, and runs each section's own ``validate()``. Mistakes raise :class:`ConfigError` whose message
names the full dotted field, the bad value and, for a misspelt key, the closest valid one. Derived values
are properties on the dataclasses, never written back. :func:`save` writes the resolved config (all
defaults filled in) into a run directory so a run can be reproduced from that file alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from t1.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the field (dotted path) and the offending value."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with help text. ``factory`` builds mutable or nested defaults."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def require(ok: bool, field: str, message: str, value: Any) -> None:
    """For ``validate()`` methods: raise a ConfigError naming ``field`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{field}: {message} (got {value!r})")


# ----------------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields for {tp.__name__} (got {value!r})")
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)} (got {value!r})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: must be one of {_type_name(tp)} (got {value!r})")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and origin is tuple:
            value = [value]  # `budgets=64` means a one-element tuple
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list (got {value!r})")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (got {value!r})")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false (got {value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer (got {value!r})")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads `1e-5` (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number (got {value!r})")
        if not math.isfinite(value):  # no field means "infinite": inf and nan only ever poison a run
            raise ConfigError(f"{where}: must be a finite number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where}: expected a string (got {value!r})")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def _build(cls: type[T], data: dict, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else f"; valid fields: {', '.join(fields)}"
        raise ConfigError(f"{_join(prefix, str(key))}: unknown field{hint}")
    kwargs = {}
    for name, value in data.items():
        default = _field_default(fields[name])
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and default is not None:
            value = _merge(to_dict(default), value)  # a partial section keeps the section's own defaults
        kwargs[name] = _coerce(value, hints[name], _join(prefix, name))
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(prefix, missing[0])}: required field is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix}.{e}" if prefix else str(e)) from None
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def from_dict(cls: type[T], data: dict | None) -> T:
    """Build and validate a config of type ``cls`` from plain data (e.g. parsed YAML)."""
    return _build(cls, dict(data or {}), "")


# ---------------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). The value is read as a YAML scalar or flow list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except RecursionError:  # the YAML parser recurses per nesting level
        raise ConfigError(f"override {key}: value nested too deeply") from None
    _check_expanded(value, f"override {key}")
    return key.split("."), value


def apply_overrides(cls: type, data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``data`` with each ``dotted.key=value`` override applied; unknown keys are errors."""
    data = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node, tp = data, cls
        for i, part in enumerate(path):
            where = ".".join(path[: i + 1])
            names = [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []
            if part not in names:
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"; did you mean '{'.'.join(path[:i] + [close[0]])}'?" if close else ""
                raise ConfigError(f"override {text!r}: {where}: unknown field{hint}")
            if i == len(path) - 1:
                node[part] = value
            else:
                tp = typing.get_type_hints(tp)[part]
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return data


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


# ------------------------------------------------------------------------------------------------ file I/O

MAX_CONFIG_NODES = 100_000  # values in a config once YAML's aliases are expanded (a real one has hundreds)


def _check_expanded(data: Any, path: str | Path) -> None:
    """Refuse a YAML file whose aliases expand past :data:`MAX_CONFIG_NODES` values (an "alias bomb": nine
    levels of nine references are 10 bytes a level on disk and 387 million values in memory) — counting
    stops at the limit, so the check itself is bounded."""
    count, stack = 0, [data]
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_NODES:,} values once its YAML aliases (*name) are "
                              "expanded; a config is far smaller")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)



MAX_CONFIG_BYTES = 4 << 20


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size >> 20} MB is not a config file (limit "
                              f"{MAX_CONFIG_BYTES >> 20} MB)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:  # the YAML parser recurses per nesting level
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    _check_expanded(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields (got {type(data).__name__})")
    return data


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*\s*=")


def is_config_path(arg: str) -> bool:
    """Whether a command-line argument names a YAML config rather than a ``dotted.key=value`` override: it ends
    in ``.yaml``/``.yml`` and either does not start like an override or is an existing file — so a sweep run's
    ``runs/sweep/rollout.samples_per_prompt=4/seed0/config.yaml`` is a path, not an override."""
    return arg.endswith((".yaml", ".yml")) and (not _OVERRIDE.match(arg) or Path(arg).is_file())


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read ``path`` (optional), apply overrides, validate. Errors from the file name the file.

    A config class with ``PRESETS`` (name -> values) and a ``preset`` field takes the named preset's values
    as its defaults: precedence is class defaults < preset < file < overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(cls, data, overrides)
    presets = getattr(cls, "PRESETS", None)
    if presets is not None and data.get("preset") not in (None, "none"):
        name = data["preset"]
        if name not in presets:
            raise ConfigError(f"preset: unknown preset {name!r}; use one of none, {', '.join(presets)}")
        fields = {f.name for f in dataclasses.fields(cls)}  # a preset may set fields this config lacks
        data = _merge({k: _deepcopy(v) for k, v in presets[name].items() if k in fields}, data)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def to_dict(cfg: Any) -> dict:
    """Plain data (tuples as lists) ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save(cfg: Any, path: str | Path, note: str = "") -> Path:
    """Write the resolved config atomically (``config.yaml`` in a run directory); ``note``: YAML comment
    lines above it (why a value differs from what was asked, say)."""
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return atomic_write_text(Path(path), header + dump(cfg))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, help) for every leaf field: the source for ``--help-config``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, name))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"
        )
        rows.append((name, _type_name(tp), repr(default), f.metadata.get("help", "")))
    return rows
