"""The options of a registered builder, read from its signature, and a config of them as
dotted keys.

Every registry entry (task, model, optimizer, lr method) declares its options as
keyword-only parameters with a default and a simple annotation (bool, int, float, str,
an Optional of those, a ``Literal`` of choices, or a list or fixed-length tuple of them),
a number's allowed values as ``Annotated[float, Range(...)]`` (``NonNegative``,
``Positive``, ``Decay``, ...); options several entries share, once, on their base class's
``__init__`` (``shared_options``). That signature is the single source of truth: the command
line's config schema is generated from it, and ``check_options`` judges a value against it,
the one place the library (``build``) and gen-train refuse an option, with the same line
(and gen-train before torch is imported). What involves two options at once (SGD's
``nesterov`` needs momentum) is the builder's to judge, in a line naming the keys.
A composed config (``{"lr": {"name": "newt", "gamma": 0.5}, ...}``) flattens to dotted keys
(``lr.gamma``) for TensorBoard's HParams and for gen-report's grouping of runs.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Callable


@dataclass(frozen=True)
class Range:
    """The numbers an option allows, declared in its annotation:
    ``momentum: Annotated[float, Range(0, 1, high_open=True)]`` allows [0, 1). For a list
    or tuple option, each item's range. Written ``[0, 1)``, ``(0, inf)`` (``str``, ``parse``)
    in gen_cli/options.json."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __post_init__(self) -> None:  # an infinite end is open: [0, inf) is Range(0)
        object.__setattr__(self, "low_open", self.low_open or self.low == -math.inf)
        object.__setattr__(self, "high_open", self.high_open or self.high == math.inf)

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return (f"{'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}")

    def allowed(self) -> str:
        """What a refusal says is allowed: ``>= 0``, ``> 0``, ``in [0, 1)``."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return f"in {self}"

    @classmethod
    def parse(cls, text: str) -> "Range":
        match = re.fullmatch(r"([\[(])(.+), (.+)([\])])", text)
        if match is None:
            raise ValueError(f"not a range: {text!r}")
        left, low, high, right = match.groups()
        return cls(float(low), float(high), left == "(", right == ")")


def _number(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


# The ranges the registries' options share (what the option means is in its builder's doc).
NonNegative = Annotated[float, Range(0)]
Positive = Annotated[float, Range(0, low_open=True)]
Decay = Annotated[float, Range(0, 1, high_open=True)]  # momentum, a beta, a smoothing constant
AtLeast1 = Annotated[float, Range(1)]
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]


@dataclass(frozen=True)
class Option:
    name: str
    type: Any  # a type OmegaConf understands: bool, int, float, str, Optional[...], list[...]
    default: Any
    choices: tuple | None = None  # the values a ``Literal[...]`` annotation allows
    length: int | None = None  # the number of items a ``tuple[X, X]`` annotation requires
    range: Range | None = None  # the numbers an ``Annotated[..., Range(...)]`` allows


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


def _range(annotation: Any) -> Range | None:
    """The ``Range`` of an ``Annotated`` annotation, through Optional."""
    if typing.get_origin(annotation) is Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, Range)), None)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(filter(None, map(_range, typing.get_args(annotation))), None)
    return None


def shared_options(init: Callable) -> Callable:
    """Mark a base class's ``__init__`` whose keyword-only options are those of every
    subclass too that hands it its ``**kwargs`` (GeN's rule, for both variants): each is
    declared once, there, and ``options_of`` lists them before the subclass's own."""
    init.shares_options = True
    return init


def _inits(cls: type) -> list[Callable]:
    """The ``__init__``s whose keyword-only parameters are ``cls``'s options: its own, and
    up its bases each ``shared_options`` one it reaches through ``**kwargs``; base first."""
    inits = [vars(klass)["__init__"] for klass in cls.__mro__ if "__init__" in vars(klass)]
    chain = inits[:1]
    for init in inits[1:]:
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD
                           for p in inspect.signature(chain[-1]).parameters.values())
        if not (takes_kwargs and getattr(init, "shares_options", False)):
            break
        chain.append(init)
    return chain[::-1]


def options_of(builder: Callable) -> list[Option]:
    """The keyword-only parameters of ``builder`` (a class: its ``__init__``, after those of
    the ``shared_options`` it inherits)."""
    options: list[Option] = []
    for target in _inits(builder) if inspect.isclass(builder) else [builder]:
        hints = typing.get_type_hints(target)  # Annotated stripped: the types
        declared = typing.get_type_hints(target, include_extras=True)  # with their ranges
        for param in inspect.signature(target).parameters.values():
            if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            if param.default is inspect.Parameter.empty:
                raise TypeError(f"option {param.name!r} of {builder.__qualname__} needs a default")
            if any(option.name == param.name for option in options):
                raise TypeError(f"option {param.name!r} of {builder.__qualname__} is declared twice")
            default = list(param.default) if isinstance(param.default, tuple) else param.default
            annotation = hints.get(param.name, Any)
            choices, length = _constraints(annotation)
            options.append(Option(param.name, _simplify(annotation), default, choices, length,
                                  _range(declared.get(param.name))))
    return options


UNKNOWN_KEY: Any = object()  # ``refusal``'s value where the key itself is refused


class SettingError(ValueError):
    """A refusal whose one line starts with the setting it refuses (``task.path=...: ...``,
    ``lr.shrink=0.5 is read only ...``, ``lr=polyak needs ...``): whoever passes it on has
    nothing to add in front (``genlr.engine.build_run`` names the component of any other)."""


def refusal(key: str, allowed: Iterable[Any], value: Any = UNKNOWN_KEY, owner: str = "") -> str:
    """The one line that refuses what is not among ``allowed``, wherever it is judged (a
    registry's names, a ``Literal``'s choices, a component's or the trainer's keys): the
    key, the bad value and what is allowed.

    ``lr.scale='foo': choose one of: constant, linear, cosine`` (a value);
    ``lr='nope': choose one of: constant, step, ...`` (a name is its group's value);
    without ``value``, the key itself is unknown (``owner``: whose keys they are):
    ``lr.foo: lr=gen_parabola has no such key; choose one of: rule, window, ...``."""
    allowed = [str(a) for a in allowed]
    choose = f"choose one of: {', '.join(allowed)}" if allowed else "it has none"
    if value is UNKNOWN_KEY:
        return f"{key}: {f'{owner} has no such key' if owner else 'no such key'}; {choose}"
    return f"{key}={value!r}: {choose}"


def check_options(group: str, name: str | None, options: Sequence[Option],
                  values: Mapping[str, Any]) -> None:
    """Raise ValueError, one line naming ``group.key``, the value and what is allowed, for
    a value the signature's ``options`` do not allow: an unknown option, a value outside
    its ``Literal`` choices (``refusal``), a list that is not of its tuple's length, a
    number that is not finite or outside its ``Range``. ``name``: the entry of ``group``
    whose options they are (None: ``group`` has one set, as the trainer's). (Types are the
    schema's business on the command line; what involves two options, the builder's.)"""
    known = {option.name: option for option in options}
    for key, value in values.items():
        option = known.get(key)
        if option is None:
            raise SettingError(refusal(f"{group}.{key}", known,
                                     owner=f"{group}={name}" if name is not None else ""))
        shown = f"{group}.{key}={list(value) if isinstance(value, tuple) else value!r}"
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            raise SettingError(f"{shown}: not a finite number")
        if option.choices is not None and value is not None and value not in option.choices:
            raise SettingError(refusal(f"{group}.{key}", option.choices, value))
        if option.length is not None and value is not None:
            if not isinstance(value, (list, tuple)):
                raise SettingError(f"{shown}: needs a list of {option.length} values")
            if len(value) != option.length:
                raise SettingError(f"{shown}: needs {option.length} values, got {len(value)}")
        numbers = [item for item in items if isinstance(item, (int, float))
                   and not isinstance(item, bool)]
        if option.range is not None and any(item not in option.range for item in numbers):
            each = "each value " if isinstance(value, (list, tuple)) else ""
            raise SettingError(f"{shown}: {each}must be {option.range.allowed()}")


def build(group: str, registry: Mapping[str, Callable], name: str, options: Mapping[str, Any],
          *args: Any, **common: Any) -> Any:
    """``registry[name](*args, **common, **options)``, the name and the ``options`` checked
    first (``check_options``); ``args`` and ``common`` are what every entry of ``group``
    takes (a model's task, an lr method's optimizer and horizon). What ``build_task``,
    ``build_model``, ``build_optimizer`` and ``build_lr_method`` do."""
    if name not in registry:
        raise SettingError(refusal(group, registry, name))
    check_options(group, name, options_of(registry[name]), options)
    return registry[name](*args, **common, **options)


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
