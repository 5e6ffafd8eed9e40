"""The options of a registered builder, read from its signature.

Every registry entry (task, model, optimizer, lr method) declares its options as
keyword-only parameters with a default and a simple annotation (bool, int, float, str,
an Optional of those, or a list of them). That signature is the single source of truth:
the command line's config schema is generated from it and its defaults fill the YAML.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    name: str
    type: Any  # a type OmegaConf understands: bool, int, float, str, Optional[...], list[...]
    default: Any


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
        options.append(Option(param.name, _simplify(hints.get(param.name, Any)), default))
    return options
