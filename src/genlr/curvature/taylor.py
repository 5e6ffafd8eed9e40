"""Second-order Taylor-mode ("jet") propagation of ``theta + s*d`` through the loss.

``d^T H d`` is the second derivative of ``s -> L(theta + s*d)`` at 0, ``<grad L, d>`` the
first. Propagating, for every intermediate value ``x(s)``, the triple ``(x, x', x'')`` at
``s = 0`` forward through the computation gives both at the loss, with no backward pass and
no tape (Griewank & Walther, "Evaluating Derivatives", 2nd ed., ch. 13; Bettencourt, Johnson
& Duvenaud, "Taylor-mode automatic differentiation for higher-order derivatives in JAX",
2019). The rules are in ``genlr.curvature.taylor_rules``. The parameters move linearly in
``s``, so their ``x''`` is zero and a layer costs five products of its size (nested forward
mode: nine).

How a pass runs (``TaylorPass``), fastest first:

``compiled``
    ``torch.compile`` (TorchDynamo) captures the loss as one graph, with its guards: the
    graph is reused only while every input shape, dtype and device, every module attribute
    and closure value the loss reads, the grad mode and the autocast state are as they were
    when it was captured, and is captured again otherwise. The captured graph is reduced to
    ATen's core ops by PyTorch's decomposition tables (``torch._decomp``: attention,
    embeddings, RMSNorm, recurrent cells, label-smoothed cross entropy ... become a few dozen
    ops with rules) and functionalized; the interpreter below, traced with ``make_fx`` over
    jets, turns it into one ATen graph of the three streams, which inductor compiles.
``interpreted``
    The same guarded graph, its jet applied op by op by the interpreter: until compiling the
    jet graph pays for itself over the passes the run has left (``TaylorPass.compile_pays``),
    or when compiling it fails (one warning says why).
``eager``
    Where no single graph exists -- the loss reads a tensor's value (``.item()``, a
    data-dependent branch, ``nonzero``, the routing of a mixture of experts) -- the loss runs
    eagerly, functionalized, under a ``TorchDispatchMode`` that applies the same rules to
    every op as it runs (one warning says why this model can't be captured).

Anything that fails in the eager pass raises ``TaylorUnsupported`` naming the op, and the
caller takes another exact path. The loss runs with attention in its math form and without
oneDNN's or cuDNN's fused recurrent kernels, so that every op has a rule or a forward-mode
derivative. Under autocast the captured graph holds the autocast's casts, so each jet
component takes the dtype the training forward has at that op.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
import operator
import os
import types
import warnings
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from genlr.messages import one_line
from genlr.curvature.probe import compiling
from genlr.curvature.taylor_rules import (
    COMPILER_RULES, IN_PLACE, RULES, Jet, TaylorUnsupported, generic_rule, is_jet, map_jet, value)

__all__ = ["TaylorPass", "TaylorUnsupported", "eager_math_kernels", "supported_ops"]

aten = torch.ops.aten

log = logging.getLogger(__name__)
_compile_seconds, _timing = 0.0, False
_compile_durations: list[float] = []  # each jet graph's compile in this process, seconds

# What compiling a jet graph costs and saves, to compile only where it pays for itself over
# the passes a run has left (``TaylorPass.compile_pays``): a first compile's seconds (this
# project's 2-core CPU, cold cache: 37-165 s for 2-layer models; a later one is expected to
# take what this process's took), and a compiled pass's time as a share of the same graph
# interpreted (0.79 on the CNN, 0.57 on the char-GPT under bf16, both on this CPU).
FIRST_COMPILE_S = 60.0
COMPILED_SHARE = 0.7


def compiling_now() -> bool:
    """Whether this process is compiling a jet graph now (``compile_seconds``'s clock runs)."""
    return _timing


def compile_seconds() -> float:
    """Seconds this process has spent compiling jet graphs: one-off time, which a run's
    steps-per-second and time-left estimates leave out."""
    return _compile_seconds


def _decompositions() -> dict:
    """PyTorch's core ATen decompositions, minus the ops that have a faster rule here."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    for op in RULES:
        table.pop(op, None)
    table[aten._thnn_fused_lstm_cell.default] = _fused_lstm_cell
    table[aten._thnn_fused_gru_cell.default] = _fused_gru_cell
    return table


# CUDA's fused recurrent cells (what nn.LSTM and nn.GRU run on CUDA without cuDNN) have
# neither a decomposition in PyTorch nor a forward-mode derivative: here they are the cells'
# equations. The workspace they also return is read by their backward only.
def _fused_lstm_cell(input_gates, hidden_gates, cx, input_bias=None, hidden_bias=None):
    gates = input_gates + hidden_gates
    for bias in (input_bias, hidden_bias):
        gates = gates if bias is None else gates + bias
    i, f, g, o = gates.chunk(4, 1)
    cy = f.sigmoid() * cx + i.sigmoid() * g.tanh()
    return o.sigmoid() * cy.tanh(), cy, gates


def _fused_gru_cell(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None):
    input_gates = input_gates if input_bias is None else input_gates + input_bias
    hidden_gates = hidden_gates if hidden_bias is None else hidden_gates + hidden_bias
    (ir, iz, i_n), (hr, hz, h_n) = input_gates.chunk(3, 1), hidden_gates.chunk(3, 1)
    r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
    n = (i_n + r * h_n).tanh()
    return n + z * (hx - n), hx.new_zeros(hx.shape[0], 5 * hx.shape[1])  # workspace


_DECOMPOSITIONS: dict | None = None


def decompositions() -> dict:
    global _DECOMPOSITIONS
    if _DECOMPOSITIONS is None:
        _DECOMPOSITIONS = _decompositions()
    return _DECOMPOSITIONS


def supported_ops() -> list[str]:
    """The ATen ops with a Taylor rule (others go through their forward-mode derivative)."""
    return sorted(str(op) for op in RULES)


@contextlib.contextmanager
def eager_math_kernels() -> Iterator[None]:
    """Run a model's own eager code with kernels that have derivatives of every order:
    compiled regions run uncompiled, attention in its math form, recurrent layers without
    oneDNN's or cuDNN's fused kernels. Used by the double-backward paths and the eager jet."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(math_kernels())
        set_stance = getattr(torch.compiler, "set_stance", None)
        if set_stance is not None:
            stack.enter_context(set_stance("force_eager"))
        yield


@contextlib.contextmanager
def math_kernels() -> Iterator[None]:
    """Attention in its math form, no fused recurrent kernels (see ``eager_math_kernels``);
    what the captured graph is decomposed under."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), _fused_kernels_off():
        yield


@contextlib.contextmanager
def _fused_kernels_off() -> Iterator[None]:
    """oneDNN's and cuDNN's fused kernels (recurrent layers above all) have no derivatives of
    higher order, and cuDNN's can't be traced. Only the ``enabled`` switches: the backends'
    ``flags`` managers would also reset the TF32 and precision settings."""
    saved = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    torch.backends.mkldnn.enabled = torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled = saved


@contextlib.contextmanager
def _no_autocast() -> Iterator[None]:
    """The jet's own arithmetic: the captured graph holds the autocast's casts already."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def _first_line(err: BaseException) -> str:
    """``one_line`` of what failed: a Dynamo backend's error carries it as ``inner_exception``."""
    return one_line(getattr(err, "inner_exception", None) or err, with_type=True)


# ------------------------------------------------------------- the jet of one op
# Ops whose rule returns a jet of fresh tensors, none shared with its inputs: a value of one
# of these read by a single op can be overwritten by that op (the relu rule does).
FRESH_RESULT = {aten.convolution.default, aten.addmm.default, aten.mm.default,
                aten.bmm.default, aten.relu.default}
# Ops whose result takes only the shape (and dtype) of their input, not its values.
CONSTANT_RESULT = {aten.full_like.default, aten.zeros_like.default, aten.ones_like.default,
                   aten.empty_like.default, aten.new_zeros.default, aten.new_ones.default,
                   aten.new_full.default, aten.new_empty.default, aten.empty_strided.default}


#: the operator libraries whose forward-mode derivatives the generic rule may use
TRUSTED_NAMESPACES = ("aten", "prims")


def jet_of(op: Any, args: tuple, kwargs: dict, val: Any = None, donated: bool = False,
           rules: dict = RULES) -> Any:
    """The jet of ``op`` with some moving (``Jet``) inputs; ``val`` is what the op gives (a
    traced graph's metadata), or None when unknown (the eager pass); ``rules``: the table
    (``COMPILER_RULES`` for a jet traced for inductor). Any failure means this path can't."""
    if op in CONSTANT_RESULT or (isinstance(val, torch.Tensor) and not val.is_floating_point()):
        # A comparison, a mask, an index (piecewise constant along the path), or a tensor
        # that only takes its shape from a moving one.
        return _plain(op, args, kwargs)
    rule = (IN_PLACE.get(op) if donated else None) or rules.get(op)
    if rule is None and getattr(op, "namespace", "aten") not in TRUSTED_NAMESPACES:
        # A custom op's forward-mode derivative may be missing or zero by construction
        # (transformers' grouped_mm fallback gives a zero tangent without a word): only a
        # rule registered for it is trusted.
        raise TaylorUnsupported(f"{op} is a custom op without a Taylor rule (register one "
                                f"in genlr.curvature.taylor_rules.RULES)")
    try:
        out = (rule or generic_rule)(op, args, kwargs)
        return normalise(out, val, op)
    except TaylorUnsupported:
        raise
    except Exception as err:
        raise TaylorUnsupported(f"the Taylor rule for {op} failed ({_first_line(err)})") from err


def _plain(op: Any, args: tuple, kwargs: dict) -> Any:
    args, kwargs = pytree.tree_map(value, (args, kwargs), is_leaf=is_jet)
    return op(*args, **kwargs)


def normalise(out: Any, val: Any, op: Any) -> Any:
    """Check a rule's result against what the op produced (``val``; None: the jet's own
    value): each component takes the value's shape (a component may carry only an operand's
    shape when the op broadcast it against a constant) and its dtype (a rule composed of
    several ops may promote: autocast's bf16 input, fp32 weight)."""
    if isinstance(out, Jet):
        if val is None:
            val = out.v
        elif not isinstance(val, torch.Tensor):
            raise TaylorUnsupported(f"the rule for {op} returned a jet for a non-tensor")
        if tuple(out.v.shape) != tuple(val.shape):
            raise TaylorUnsupported(f"the rule for {op} gave shape {tuple(out.v.shape)}, "
                                    f"the op {tuple(val.shape)}")
        return map_jet(lambda c: _like(c, val, op), out)
    if isinstance(out, (tuple, list)) and (val is None or (
            isinstance(val, (tuple, list)) and len(out) == len(val))):
        vals = [None] * len(out) if val is None else val
        return type(out)(normalise(o, v, op) for o, v in zip(out, vals))
    return out


def _like(c: torch.Tensor, val: torch.Tensor, op: Any) -> torch.Tensor:
    if c.shape != val.shape:
        try:
            c = c.expand(val.shape)
        except RuntimeError as err:
            raise TaylorUnsupported(f"the rule for {op} gave a component of shape "
                                    f"{tuple(c.shape)} for a value of {tuple(val.shape)}") from err
    return c if c.dtype == val.dtype else c.to(val.dtype)


# ---------------------------------------------------------------- the interpreter
def interpret(gm: torch.fx.GraphModule, inputs: list[Any], rules: dict = RULES) -> list[Any]:
    """The graph's outputs with jets for inputs: each op through ``jet_of`` with ``rules``
    (or plainly when no input moves). Each value is dropped after its last use, so the three jet streams of
    only the live layers are held at once (not of the whole network): the pass's peak
    memory."""
    env: dict[torch.fx.Node, Any] = {}
    it = iter(inputs)
    nodes = list(gm.graph.nodes)
    dead_after: dict[int, list[torch.fx.Node]] = {}
    last_use = {inp: i for i, node in enumerate(nodes) for inp in node.all_input_nodes}
    for node, i in last_use.items():
        dead_after.setdefault(i, []).append(node)

    def load(a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: env[n])

    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            env[node] = next(it)
        elif node.op == "get_attr":
            env[node] = getattr(gm, node.target)
        elif node.op == "call_function":
            args, kwargs = load(node.args), load(node.kwargs)
            if node.target is operator.getitem:
                env[node] = args[0][args[1]]
            elif _moves(args, kwargs):
                first = node.args[0] if node.args else None
                donated = (isinstance(first, torch.fx.Node) and len(first.users) == 1
                           and first.target in FRESH_RESULT)
                env[node] = jet_of(node.target, args, kwargs, node.meta.get("val"), donated, rules)
            else:
                env[node] = node.target(*args, **kwargs)
            del args, kwargs
        elif node.op == "output":
            result = load(node.args[0])
            return list(result) if isinstance(result, (list, tuple)) else [result]
        else:
            raise TaylorUnsupported(f"graph node {node.op}")
        for dead in dead_after.get(i, ()):
            env.pop(dead, None)
    raise TaylorUnsupported("graph without output")


def _moves(args: Any, kwargs: Any) -> bool:
    return any(is_jet(x) for x in pytree.tree_leaves((args, kwargs), is_leaf=is_jet))


def _totals(outputs: list[Any], order: int) -> list[torch.Tensor]:
    """Per output: its value, then the sums of its first and (``order`` 2) second derivative
    (float64). With ``order`` 1 nothing reads the second derivatives, so a compiled graph
    drops them: a forward pass with its tangent, three products a layer."""
    values, slopes, curvatures = [], [], []
    for out in outputs:
        jet = out if is_jet(out) else None
        values.append(value(out))
        for component, into in ((jet and jet.t, slopes), (jet and jet.a, curvatures)):
            into.append(torch.zeros((), dtype=torch.float64) if component is None
                        else component.sum(dtype=torch.float64))
    return [*values, *slopes, *curvatures[:len(curvatures) if order == 2 else 0]]


# -------------------------------------------------------- the captured graph's jet
class _Request:
    """One pass's tangents (by the identity of the tensors they move) and its results."""

    def __init__(self, tangents: dict[int, torch.Tensor], compile: bool, order: int) -> None:
        self.tangents, self.compile, self.order = tangents, compile, order
        self.values: list[Any] | None = None
        self.mode = ""
        self.error: TaylorUnsupported | None = None
        self.slopes: list[torch.Tensor] = []
        self.curvatures: list[torch.Tensor] = []


class _JetGraph:
    """What the Dynamo backend returns for one captured graph: called with the graph's
    inputs (parameters among them), it runs the jet of the graph along the tangents of the
    pass in flight, leaves the derivatives in its request and returns the graph's values.
    One jet graph per set of moving inputs, compiled (or interpreted) on first use."""

    def __init__(self, owner: "TaylorPass", graph: torch.fx.GraphModule, count: int) -> None:
        self.owner, self.graph, self.count = owner, graph, count
        # per (moving inputs, compiled?): the jet's runner and how it runs
        self.runners: dict[tuple, Callable[..., Any]] = {}
        self.modes: dict[tuple, str] = {}
        self.interpreted_s: list[float] = []  # passes run interpreted until compiling pays

    def __call__(self, *args: Any) -> Any:
        request = self.owner.request
        if request is None:  # called outside a pass: the loss's values alone
            with torch.no_grad(), _no_autocast():
                return tuple(interpret(self.graph, list(args)))
        moving = tuple(i for i, x in enumerate(args) if id(x) in request.tangents)
        tangents = [request.tangents[id(args[i])] for i in moving]
        compile = request.compile and self.owner.compile_pays(self.interpreted_s)
        key = (moving, compile, request.order)
        if key not in self.runners:
            self.runners[key], self.modes[key] = self._build(moving, list(args), tangents,
                                                             compile, request.order)
        started = time.perf_counter()
        try:
            with torch.no_grad(), _no_autocast():
                out = self.runners[key](*args, *tangents)
                if request.compile and not compile:  # timed, to see when compiling pays
                    if any(isinstance(x, torch.Tensor) and x.is_cuda for x in args):
                        torch.cuda.synchronize()
                    self.interpreted_s.append(time.perf_counter() - started)
        except Exception as err:  # the jet itself can't (not the capture): no eager retry
            request.error = err if isinstance(err, TaylorUnsupported) else TaylorUnsupported(
                f"the jet of the captured graph failed ({_first_line(err)})")
            raise request.error from err
        request.mode = self.modes[key]
        k = self.count
        request.values, request.slopes = list(out[:k]), list(out[k:2 * k])
        request.curvatures = list(out[2 * k:3 * k]) if request.order == 2 else []
        return tuple(out[:k])

    def _jet(self, moving: tuple[int, ...], order: int,
             rules: dict = RULES) -> Callable[..., list[Any]]:
        n, graph = len(self.graph.graph.find_nodes(op="placeholder")), self.graph

        def jet(*flat: Any) -> list[Any]:
            inputs = list(flat[:n])
            for k, i in enumerate(moving):
                inputs[i] = Jet(inputs[i], flat[n + k], None)
            return _totals(interpret(graph, inputs, rules), order)
        return jet

    def _build(self, moving: tuple[int, ...], args: list[Any], tangents: list,
               compile: bool, order: int) -> tuple[Callable, str]:
        jet = self._jet(moving, order)
        if not compile:
            return jet, "interpreted"
        from torch.fx.experimental.proxy_tensor import make_fx

        try:
            with torch.no_grad(), _no_autocast():
                # One ATen graph of the three streams: the interpreter, traced over jets.
                traced = make_fx(self._jet(moving, order, COMPILER_RULES), tracing_mode="fake",
                                 _allow_non_fake_inputs=True)(*args, *tangents)
                return _compile(traced, [*args, *tangents]), "compiled"
        except Exception as err:  # the interpreter gives the same jet, op by op
            self.owner.compile_failed(err)
            return jet, "interpreted"


def _compile(graph: torch.fx.GraphModule, example: list[Any]) -> Callable[..., Any]:
    """Inductor, as ``torch.compile`` would call it on a captured graph; said in the log,
    which would otherwise fall silent for the minute it can take on a CPU."""
    from torch._inductor.compile_fx import compile_fx

    # The graph's views are valid for the strides its trace saw; inductor retraces it, and
    # may lay a value out otherwise (a decomposed attention's transposed key): as reshapes,
    # they copy where they must and stay views where they can.
    for node in graph.graph.find_nodes(op="call_function", target=torch.ops.aten.view.default):
        node.target = torch.ops.aten.reshape.default
    graph.recompile()
    started = time.perf_counter()
    with _one_off(), compiling():  # said inside: a stop signal it prompts must find it compiling
        log.info("compiling the curvature pass (%d ops; once per graph, up to a minute or two "
                 "on a CPU)", len(graph.graph.nodes))
        compiled = compile_fx(graph, example)
    _compile_durations.append(time.perf_counter() - started)
    log.info("compiled the curvature pass in %.0f s", _compile_durations[-1])
    return compiled


@contextlib.contextmanager
def _one_off() -> Iterator[None]:
    """Count the time inside as compiling (``compile_seconds``), once if nested."""
    global _compile_seconds, _timing
    if _timing:
        yield
        return
    started, _timing = time.perf_counter(), True
    try:
        yield
    finally:
        _compile_seconds += time.perf_counter() - started
        _timing = False


# ------------------------------------------------------------------- the eager jet
class _JetMode(TorchDispatchMode):
    """Applies the rules to every op as the loss runs: the jets of moving values are kept
    beside them (``jets``: value tensor -> ``(x', x'')``), so the loss's own code sees plain
    tensors with their real values and may read them (``.item()``, ``nonzero``, branches).
    Runs below functionalization, so the loss's in-place ops and views arrive as pure ops.
    An op without a rule is decomposed where the traced pass decomposes it (PyTorch's
    tables, or its composite kernel), its ops coming back here; any other goes through the
    generic rule."""

    def __init__(self, jets: WeakIdKeyDictionary) -> None:
        super().__init__()
        self.jets = jets
        self.by_storage: dict[int, list[weakref.ref]] = {}  # for ``_stale_aliases``
        # The dispatch state outside this handler, where forward mode works (inside it,
        # autograd's keys are off), without autocast (the loss's casts arrive as ops): the
        # generic rule runs in it.
        with _no_autocast():
            self.outside = (torch._C._dispatch_tls_local_include_set(),
                            torch._C._dispatch_tls_local_exclude_set())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        jets = self.jets

        def lift(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x in jets:
                jet = jets[x]
                if jet is _STALE:
                    raise TaylorUnsupported(f"{func} read a value an in-place op wrote over "
                                            "through another view")
                return Jet(x, *jet)
            return x

        jargs, jkwargs = pytree.tree_map(lift, (args, kwargs))
        if not _moves(jargs, jkwargs):
            return func(*args, **kwargs)
        if func._schema.is_mutable:
            return self._in_place(func, args, kwargs, jargs, jkwargs)
        return self._moving(func, args, kwargs, jargs, jkwargs)

    def _moving(self, func, args, kwargs, jargs, jkwargs):
        if func in RULES or func in CONSTANT_RESULT:
            return self._lower(jet_of(func, jargs, jkwargs))
        decomposition = decompositions().get(func)
        if decomposition is None and torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "CompositeImplicitAutograd"):
            decomposition = func.decompose
        if decomposition is not None:
            with self:  # the decomposition's ops come back here
                return decomposition(*args, **kwargs)
        plain = func(*args, **kwargs)
        if not any(isinstance(x, torch.Tensor) and x.is_floating_point()
                   for x in pytree.tree_leaves(plain)):
            return plain  # a comparison, an index, a scalar read off a value
        with torch._C._ForceDispatchKeyGuard(*self.outside):
            return self._lower(jet_of(func, jargs, jkwargs, val=plain))

    def _in_place(self, func, args, kwargs, jargs, jkwargs):
        """``x.op_(...)`` as ``x.copy_(op(x, ...))``. Functionalization turns the loss's own
        in-place ops into pure ones; these come from inside composite kernels (a recurrent
        cell's gates, label smoothing), on their own temporaries. Other tensors sharing the
        written storage keep jets that are no longer right: reading one raises."""
        schema = func._schema
        written = [i for i, a in enumerate(schema.arguments)
                   if a.alias_info is not None and a.alias_info.is_write]
        pure = _functional_variant(func)
        if written != [0] or pure is None:
            raise TaylorUnsupported(f"the eager jet met an in-place op ({func}) on a moving value")
        out = self._moving(pure, args, kwargs, jargs, jkwargs)
        x = args[0]
        if torch.Tag.inplace_view in func.tags:  # transpose_, squeeze_...: x's shape changes
            func(*args, **kwargs)
            self.jets[x] = self.jets[out] if out in self.jets else (None, None)
            return x
        x.copy_(out)
        if out in self.jets:
            self._stale_aliases(x)
            self.jets[x] = self.jets[out]
        elif x in self.jets:
            del self.jets[x]
        return x

    def _stale_aliases(self, x: torch.Tensor) -> None:
        storage = x.untyped_storage().data_ptr()
        written = None
        for ref in self.by_storage.get(storage, []):
            alias = ref()
            if alias is None or alias is x or alias not in self.jets:
                continue
            if written is None:
                written = _elements(x)
            if written is _ALL or _overlap(written, alias):
                self.jets[alias] = _STALE

    def _lower(self, out: Any) -> Any:
        def lower(x: Any) -> Any:
            if is_jet(x):
                self.jets[x.v] = (x.t, x.a)
                self.by_storage.setdefault(x.v.untyped_storage().data_ptr(), []).append(
                    weakref.ref(x.v))
                return x.v
            return x
        return pytree.tree_map(lower, out, is_leaf=is_jet)


class _ReadThrough(torch.overrides.TorchFunctionMode):
    """``tolist()`` and ``numpy()`` of a functionalized tensor read its value (they read the
    storage directly, which a functional wrapper lacks): the routing of a mixture of experts
    iterates over the experts that received tokens this way."""

    READS = {torch.Tensor.tolist, torch.Tensor.numpy}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS and args and torch._is_functional_tensor(args[0]):
            torch._sync(args[0])
            args = (torch._from_functional_tensor(args[0]), *args[1:])
        return func(*args, **kwargs)


def _functional_variant(func: Any) -> Any:
    """``aten.op.overload`` for ``aten.op_.overload``: the same overload name, else the
    overload taking the same argument types (``transpose_.default`` -> ``transpose.int``)."""
    name = func._schema.name.split("::")[-1]
    packet = getattr(aten, name[:-1], None) if name.endswith("_") else None
    if packet is None:
        return None
    types_ = [str(a.type) for a in func._schema.arguments]
    candidates = [getattr(packet, func._overloadname, None)] + [
        getattr(packet, o) for o in packet.overloads()]
    for op in candidates:
        if op is not None and not op._schema.is_mutable and \
                [str(a.type) for a in op._schema.arguments] == types_:
            return op
    return None


_ALL = object()
#: storages larger than this (elements) count as overlapping whole, rather than compared
_OVERLAP_LIMIT = 1 << 24


def _elements(x: torch.Tensor) -> Any:
    """Which elements of its storage ``x`` covers, as a boolean mask (``_ALL``: too large
    to tell, count it all): views of one storage that cover disjoint parts (the gates of a
    recurrent cell, chunked) do not see each other's writes."""
    n = x.untyped_storage().nbytes() // x.element_size()
    if n > _OVERLAP_LIMIT:
        return _ALL
    mask = torch.zeros(n, dtype=torch.bool, device=x.device)
    mask.as_strided(x.shape, x.stride(), x.storage_offset()).fill_(True)
    return mask


def _overlap(mask: torch.Tensor, y: torch.Tensor) -> bool:
    if y.element_size() * mask.numel() != y.untyped_storage().nbytes():
        return True  # another dtype's view of the bytes: count it as overlapping
    return bool(mask.as_strided(y.shape, y.stride(), y.storage_offset()).any())


class _Stale(tuple):
    """The jet of a tensor whose storage an in-place op has since written through another."""


_STALE = _Stale()


# ------------------------------------------------------------------------ the pass
_COUNTER = itertools.count()
_EMITTING = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log")


def _logging_calls() -> set[Callable[..., Any]]:
    """What a loss may call to log or warn, which changes nothing it computes and would
    otherwise break its graph (Hugging Face's ``logger.warning_once`` in every model's loss):
    the capture leaves them out, and the training forward says them as usual. Loggers'
    added methods (``warning_once``, ``warning_advice``) count by their names."""
    methods = {getattr(logging.Logger, name) for name in dir(logging.Logger)
               if name.startswith(_EMITTING) and callable(getattr(logging.Logger, name))}
    return methods | {warnings.warn}


def _logging_left_out() -> dict[str, Any]:
    """Dynamo's setting for ``_logging_calls`` (an older torch has none: the capture breaks)."""
    import torch._dynamo

    if hasattr(torch._dynamo.config, "ignore_logger_methods"):
        return {"ignore_logger_methods": _logging_calls()}
    return {}


class TaylorPass:
    """``(<grad L, d>, d^T H d)`` of ``loss_fn(model, batch)`` along ``d`` at the current
    parameters, from one jet: compiled where the loss is one graph, else eagerly (see the
    module docstring). ``mode`` says how the last pass ran.

    Args:
        bound: the loss as a module, ``bound(batch) -> scalar`` (its parameters are the
            model's, uncompiled).
        compile: compile the jet graph with inductor (False: interpret it; None: as the
            environment says, ``GENLR_TAYLOR_COMPILE``: ``0`` never, ``1`` at once, ``auto``
            or unset once it pays for itself).
        passes_left: how many passes the run still expects to make (its owner knows the
            run's length); the jet graph then runs interpreted until compiling it pays for
            itself over them (``compile_pays``). None: compile at once.
    """

    def __init__(self, bound: nn.Module, compile: bool | None = None,
                 passes_left: Callable[[], float] | None = None) -> None:
        self.bound = bound
        setting = os.environ.get("GENLR_TAYLOR_COMPILE", "auto")
        self.compile = setting != "0" if compile is None else compile
        self.passes_left = None if setting == "1" else passes_left
        self.mode = ""
        self.request: _Request | None = None
        self.uncaptured = ""  # why the loss can't be captured as one graph ("": it can)
        self._compile_warned = False
        self._captured = self._capture_function()

    def __call__(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
                 compile: bool = True) -> tuple[float, float]:
        """``(<grad L, d>, d^T H d)``; ``compile=False``: the captured graph's jet
        interpreted (what the check compares a compiled pass with)."""
        return self.jet(params, d, batch, compile)[1:]

    def jet(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
            compile: bool = True, order: int = 2) -> tuple[float, float, float]:
        """``(L, <grad L, d>, d^T H d)`` at the current parameters; with ``order`` 1 the
        curvature is not computed (NaN) unless the jet runs eagerly."""
        tangents = {id(p): v.to(p.dtype) for p, v in zip(params, d)}
        if not self.uncaptured:
            try:
                result = self._run_captured(tangents, batch, compile and self.compile, order)
            except TaylorUnsupported:
                raise
            except Exception as err:
                # Dynamo can't capture this loss, or this batch is one the loss itself
                # can't take: only an eager pass that works says the loss needs one.
                result = self._run_eager(tangents, batch)
                self._not_captured(_first_line(err))
                return result
            if result is not None:
                return result
            self._not_captured("torch.compile ran the loss without the jet graph")
        return self._run_eager(tangents, batch)

    # ------------------------------------------------------------------ captured
    def _capture_function(self) -> Callable[[Any], torch.Tensor]:
        bound = self.bound

        def loss(batch: Any) -> torch.Tensor:
            return bound(batch)

        # Dynamo keeps its graphs and guards per code object: a code object of this pass's
        # own, so that other passes (other models) neither share nor evict its graphs.
        code = loss.__code__.replace(co_name=f"genlr_taylor_loss_{next(_COUNTER)}")
        fn = types.FunctionType(code, loss.__globals__, code.co_name, None, loss.__closure__)
        return torch.compile(fn, backend=self._backend, fullgraph=True, dynamic=False)

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> _JetGraph:
        from torch.fx.experimental.proxy_tensor import make_fx

        with _one_off(), torch.no_grad(), math_kernels():
            # Decompose first, then functionalize the decomposed graph: decompositions may
            # write in place (a recurrent cell's gates), functionalization removes that.
            decomposed = make_fx(gm, decomposition_table=decompositions())(*example_inputs)
            graph = make_fx(torch.func.functionalize(decomposed))(*example_inputs)
        count = len(graph.graph.output_node().args[0])
        return _JetGraph(self, graph, count)

    def _run_captured(self, tangents: dict[int, torch.Tensor], batch: Any, compile: bool,
                      order: int):
        import torch._dynamo

        self.request = request = _Request(tangents, compile, order)
        try:
            with torch._dynamo.config.patch(allow_rnn=True, fail_on_recompile_limit_hit=True,
                                            **_logging_left_out()):
                loss = self._captured(batch)
        except Exception:
            if request.error is not None:
                raise request.error from None
            raise
        finally:
            self.request = None
        if request.values is None:  # dynamo ran the loss itself (compiling disabled?)
            return None
        for i, v in enumerate(request.values):
            if v is loss:
                self.mode = request.mode
                curvature = float(request.curvatures[i]) if request.curvatures else math.nan
                return float(v), float(request.slopes[i]), curvature
        raise TaylorUnsupported("the loss is none of the captured graph's outputs")

    def compile_pays(self, interpreted_s: list[float]) -> bool:
        """Whether compiling a graph's jet now saves more than it costs: the passes left
        times what a compiled pass saves on the fastest interpreted one (the first warms
        up) against a compile's expected seconds (``FIRST_COMPILE_S``, ``COMPILED_SHARE``).
        A short run on a CPU never waits a minute for a compile that saves it seconds; a
        long one, or a GPU's launch-bound interpreted pass, compiles after two passes."""
        if self.passes_left is None:
            return True
        if len(interpreted_s) < 2:
            return False
        expected = (sum(_compile_durations) / len(_compile_durations) if _compile_durations
                    else FIRST_COMPILE_S)
        return self.passes_left() * min(interpreted_s[1:]) * (1 - COMPILED_SHARE) > expected

    def compile_failed(self, err: BaseException) -> None:
        if not self._compile_warned:
            self._compile_warned = True
            warnings.warn(f"Taylor pass: compiling the jet graph failed ({_first_line(err)}); "
                          "it runs interpreted, op by op", RuntimeWarning, stacklevel=2)

    def _not_captured(self, reason: str) -> None:
        self.uncaptured = reason
        warnings.warn(f"Taylor pass: the loss can't be captured as one graph ({reason}); its "
                      "jet runs eagerly, op by op", RuntimeWarning, stacklevel=3)

    # --------------------------------------------------------------------- eager
    def _run_eager(self, tangents: dict[int, torch.Tensor], batch: Any) -> tuple[float, float]:
        state = dict(self.bound.named_parameters())
        state.update(dict(self.bound.named_buffers()))
        names = list(state)
        leaves, spec = pytree.tree_flatten(batch)
        bound = self.bound

        def loss_of(tensors: list[torch.Tensor], batch_leaves: list[Any]) -> torch.Tensor:
            b = pytree.tree_unflatten(batch_leaves, spec)
            return torch.func.functional_call(bound, dict(zip(names, tensors)), (b,))

        jets = WeakIdKeyDictionary()
        tensors = [state[n].detach() for n in names]
        for t, original in zip(tensors, state.values()):
            if id(original) in tangents:
                jets[t] = (tangents[id(original)], None)
        try:
            with torch.no_grad(), eager_math_kernels(), _JetMode(jets), _ReadThrough():
                loss = torch.func.functionalize(loss_of)(tensors, leaves)
        except TaylorUnsupported:
            raise
        except Exception as err:
            raise TaylorUnsupported(f"the eager jet failed ({_first_line(err)})") from err
        t, a = jets.get(loss, (None, None)) if isinstance(loss, torch.Tensor) else (None, None)
        self.mode = "eager"
        return float(loss), _total(t), _total(a)


def _total(x: torch.Tensor | None) -> float:
    if x is None:
        return 0.0
    return float(x.sum(dtype=torch.float64))
