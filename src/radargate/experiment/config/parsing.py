"""YAML text and ``--set`` overrides to typed sections: each value read as its field's type.

Values are read as their field's type, not by YAML 1.1's implicit rules (which read ``3e-4`` as
a string and ``no`` as ``False``): the YAML is parsed with every scalar kept as text, and each
text is converted by the dataclass field it lands in (``3e-4``, ``1_000``, ``.5`` are numbers in
numeric fields, ``no`` stays a string in a string field). A value that does not fit its field is
an error naming the field, the value and the expected type. A new section needs no code here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

import yaml

from radargate.config import MoLoRAConfig


def parse_yaml(text: str, source: str) -> Any:
    """YAML with every scalar kept as text (``BaseLoader``): fields type their own values."""
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader builds only str, list and dict
    except yaml.YAMLError as error:
        raise ValueError(f"{source} is not valid YAML: {error}") from None


def build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, each value typed by its field (recursing into sections)."""
    label = prefix.rstrip(".") or "config"
    if not isinstance(values, dict):
        raise ValueError(f"{label} must be a mapping of settings, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"in {label} " if prefix else ""
        raise ValueError(f"unknown key(s) {where}{[prefix + key for key in unknown]}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    built = {name: _typed(f"{prefix}{name}", value, hints[name]) for name, value in values.items()}
    if cls is MoLoRAConfig:
        try:
            return cls(**built)
        except ValueError as error:  # its messages start with the field name: say which section
            raise ValueError(f"{prefix}{error}") from None
    home = getattr(cls, "SECTION", None)  # a section also used elsewhere (a source among study.unseen_sources)
    if home and prefix and not prefix.startswith(home):
        try:
            return cls(**built)
        except ValueError as error:
            raise ValueError(str(error).replace(home, prefix.rstrip("."), 1)) from None
    return cls(**built)


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on"), ("false", "no", "off")
NULL_WORDS = ("null", "~", "none", "")


def _typed(name: str, value: Any, kind: Any) -> Any:
    """``value`` as field type ``kind``: YAML text is converted, typed values are checked."""
    if dataclasses.is_dataclass(kind):
        return build(kind, value, prefix=f"{name}.")
    options = typing.get_args(kind) if typing.get_origin(kind) in (Union, types.UnionType) else ()
    if type(None) in options:
        if value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS):
            return None
        options = tuple(option for option in options if option is not type(None))
    if len(options) > 1:  # list[str] | str: a list of names or one pattern
        wanted = list if isinstance(value, list) else str
        kind = next((option for option in options if (typing.get_origin(option) or option) is wanted), options[0])
    elif options:
        kind = options[0]
    if dataclasses.is_dataclass(kind):  # an optional section such as model.quantization
        return build(kind, value, prefix=f"{name}.")
    if typing.get_origin(kind) is dict:  # free-form settings (a generator's own): their reader types the values
        if not isinstance(value, dict):
            raise ValueError(f"{name}={value!r} is not allowed; expected a mapping such as {{key: value}}")
        return dict(value)
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise ValueError(f"{name}={value!r} is not allowed; expected a list such as [a, b]")
        (item,) = typing.get_args(kind)
        return [_typed(name, element, item) for element in value]
    return _scalar(name, value, kind)


def _scalar(name: str, value: Any, kind: type) -> Any:
    """Text to ``bool``/``int``/``float``/``str`` as users write it; anything else must already fit."""
    if isinstance(value, str) and kind is not str:
        value = _parse_text(name, value.strip(), kind)
    fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not fits:
        raise ValueError(f"{name}={value!r} is not allowed; expected {_describe(kind)}")
    return value


def _parse_text(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise ValueError(f"{name}={text!r} is not allowed; expected {_describe(bool)}")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not allowed; expected {_describe(kind)}") from None
    if kind is int:
        if not (math.isfinite(number) and number.is_integer()):
            raise ValueError(f"{name}={text!r} is not allowed; expected {_describe(int)}")
        return int(text) if text.lstrip("+-").replace("_", "").isdigit() else int(number)
    return number


def _describe(kind: type) -> str:
    return {
        bool: "true or false (also yes/no, on/off)",
        int: "an integer such as 8 or 1_000",
        float: "a number such as 0.001, 3e-4 or .5",
        str: "a text value",
    }.get(kind, kind.__name__)


def apply_override(values: dict[str, Any], override: str) -> None:
    """``train.steps=50`` -> ``values["train"]["steps"] = "50"`` (YAML text, typed by its field later)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r} is not allowed; write it as section.key=value, e.g. train.steps=50")
    *sections, leaf = key.strip().split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {override!r}: {section!r} is not a section")
    target[leaf] = parse_yaml(raw, f"override {override!r}")
