"""`--field=value` flags for a dataclass of hyperparameters: parsing, presets, `--help` from the comments beside
the fields, and the generic range checks. The dataclass (train_gpt.Hyperparameters) keeps its own cross-field
rules; this module knows nothing of what the fields mean."""
from __future__ import annotations

import dataclasses
import inspect
import re


def field_comments(cls) -> dict[str, str]:
    """The comment beside each field in `cls`'s source: the one description of a flag, kept in one place."""
    return dict(re.findall(r"^\s+(\w+): \w+ = .*?#\s*(.*)$", inspect.getsource(cls), re.M))


def usage(cls, doc: str, presets: dict, choices: dict) -> str:
    """--help: the doc, then one line per field (its default, the comment beside it, its choices)."""
    lines = [doc.strip(), "", f"Hyperparameters (--field=value; defaults are the GPU run; presets: "
             f"{', '.join(presets)}):"]
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        allowed = f"  [{' | '.join(choices[f.name])}]" if f.name in choices else ""
        lines.append(f"  --{f.name}={f.default!r}  {comments.get(f.name, '')}{allowed}")
    return "\n".join(lines)


def parse_value(value: str, typ: str, key: str):
    """A flag's text as the field's type (int, float or str); ValueError naming the flag otherwise."""
    typ = getattr(typ, "__name__", typ)  # a type, or its name under `from __future__ import annotations`
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"--{key}={value!r} is not a valid {typ}") from None
    return value


def from_preset(cls, presets: dict, name: str, /, **overrides):
    """cls(**presets[name], preset=name, **overrides); ValueError naming an unknown preset or field."""
    if name not in presets:
        raise ValueError(f"--preset={name}: unknown; choose one of {', '.join(presets)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: {sorted(fields)}")
    return cls(**{**presets[name], "preset": name, **overrides})


def parse_args(cls, presets: dict, argv: list[str], help_text) -> object:
    """`--field=value` arguments -> an instance of cls, `--preset=name` applied first (default: the first
    preset). -h/--help prints help_text() and exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        raise SystemExit(0)
    kv = {}
    for arg in argv:
        if not (arg.startswith("--") and "=" in arg):
            raise ValueError(f"bad argument {arg!r}: use --field=value, e.g. --w_max=2 (see --help)")
        key, value = arg[2:].split("=", 1)
        kv[key.replace("-", "_")] = value
    preset = kv.pop("preset", next(iter(presets)))
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    overrides = {}
    for key, value in kv.items():
        if key not in types:
            raise ValueError(f"unknown hyperparameter --{key}; see --help for the list")
        overrides[key] = parse_value(value, types[key], key)
    return from_preset(cls, presets, preset, **overrides)


def preset_overrides(obj, presets: dict) -> dict:
    """Fields the preset sets (and the command line left alone) that depart from the dataclass defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    return {k: v for k, v in presets[obj.preset].items() if v != defaults[k] and getattr(obj, k) == v}


def check_ranges(obj, choices: dict, positive=(), non_negative=(), switches=(), unit_interval=()) -> None:
    """ValueError naming the first flag outside its range: a choice not listed, a value not > 0 or not >= 0,
    a switch not 0 or 1, a fraction outside [0, 1]."""
    for key, ok in choices.items():
        if getattr(obj, key) not in ok:
            raise ValueError(f"--{key}={getattr(obj, key)}: use one of {', '.join(ok)}")
    for keys, ok, need in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
                           (switches, lambda v: v in (0, 1), "0 or 1"),
                           (unit_interval, lambda v: 0 <= v <= 1, "in [0, 1]")):
        for key in keys:
            if not ok(getattr(obj, key)):
                raise ValueError(f"--{key}={getattr(obj, key)} must be {need}")
