"""The options of a registered builder, read from its signature, and a config of them as
dotted keys.

Every registry entry (task, model, optimizer, lr method) declares its options as
keyword-only parameters with a default and a simple annotation (bool, int, float, str,
an Optional of those, a ``Literal`` of choices, or a list or fixed-length tuple of them).
That signature is the single source of truth: the command line's config schema is
generated from it, and ``check_options`` judges a value against it, the one place the
library (``build``) and gen-train refuse an option, with the same line.
A composed config (``{"lr": {"name": "newt", "gamma": 0.5}, ...}``) flattens to dotted keys
(``lr.gamma``) for TensorBoard's HParams and for gen-report's grouping of runs.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    name: str
    type: Any  # a type OmegaConf understands: bool, int, float, str, Optional[...], list[...]
    default: Any
    choices: tuple | None = None  # the values a ``Literal[...]`` annotation allows
    length: int | None = None  # the number of items a ``tuple[X, X]`` annotation requires


def _simplify(annotation: Any) -> Any:
    """``float | None`` -> ``Optional[float]``; ``Literal[...]`` -> str; ``tuple`` -> list."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _simplify(args[0]) if len(args) == 1 else Any
        return typing.Optional[inner]
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(annotation)
        return typing.List[_simplify(args[0])] if args else typing.List[Any]
    return annotation


def _constraints(annotation: Any) -> tuple[tuple | None, int | None]:
    """The choices of a ``Literal`` and the length of a fixed ``tuple``, through Optional."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _constraints(inner[0]) if len(inner) == 1 else (None, None)
    if origin is typing.Literal:
        return args, None
    if origin is tuple and args and Ellipsis not in args:
        return None, len(args)
    return None, None


def options_of(builder: Callable) -> list[Option]:
    """The keyword-only parameters of ``builder`` (a class: its ``__init__``)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    hints = typing.get_type_hints(target)
    options = []
    for param in inspect.signature(target).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"option {param.name!r} of {builder.__qualname__} needs a default")
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        annotation = hints.get(param.name, Any)
        choices, length = _constraints(annotation)
        options.append(Option(param.name, _simplify(annotation), default, choices, length))
    return options


def check_options(group: str, name: str, options: Sequence[Option],
                  values: Mapping[str, Any]) -> None:
    """Raise ValueError, one line naming ``group.key``, the value and what is allowed, for
    a value the signature's ``options`` do not allow: an unknown option, a value outside
    its ``Literal`` choices, a list that is not of its tuple's length, a number that is
    not finite. (Types are the schema's business on the command line; the builders judge
    ranges.)"""
    known = {option.name: option for option in options}
    for key, value in values.items():
        option = known.get(key)
        if option is None:
            allowed = f"choose one of: {', '.join(known)}" if known else "it has no options"
            raise ValueError(f"{group}.{key}: {group}={name} has no option {key!r}; {allowed}")
        shown = f"{group}.{key}={list(value) if isinstance(value, tuple) else value!r}"
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            raise ValueError(f"{shown}: not a finite number")
        if option.choices is not None and value is not None and value not in option.choices:
            raise ValueError(f"{shown}: choose one of: {', '.join(map(str, option.choices))}")
        if option.length is not None and value is not None:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{shown}: needs a list of {option.length} values")
            if len(value) != option.length:
                raise ValueError(f"{shown}: needs {option.length} values, got {len(value)}")


def build(group: str, registry: Mapping[str, Callable], name: str, *args: Any, **options: Any) -> Any:
    """``registry[name](*args, **options)``, the name and the options checked first
    (``check_options``): what ``build_task``, ``build_model`` and ``build_optimizer`` do."""
    if name not in registry:
        raise ValueError(f"unknown {group} {name!r}; choose one of: {', '.join(registry)}")
    check_options(group, name, options_of(registry[name]), options)
    return registry[name](*args, **options)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}``: nested mappings
    become dotted keys, every other value is kept as it is."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``flatten_config``: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return root
