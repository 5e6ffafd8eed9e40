"""Second-order Taylor-mode ("jet") propagation of ``theta + s*d`` through a traced loss.

``d^T H d`` is the second derivative of ``s -> L(theta + s*d)`` at 0, ``<grad L, d>`` the
first. Propagating, for every intermediate value ``x(s)``, the triple ``(x, x', x'')`` at
``s = 0`` forward through the computation gives both at the loss, with no backward pass and
no tape (the rules: ``genlr.methods.taylor_rules``). The parameters move linearly in ``s``,
so their ``x''`` is zero and a layer costs five products of its size (nested forward mode:
nine).

The loss is traced once per input signature into ATen operations with ``make_fx`` and
reduced to PyTorch's core ATen op set by its own decomposition tables (``torch._decomp``):
attention, embeddings, RMSNorm, recurrent cells, label-smoothed cross entropy and the like
arrive as a few dozen ops with rules. The trace runs the model's eager code (a
``torch.compile``d model or submodule runs uncompiled) with attention in its math form and
without oneDNN's fused recurrent kernels, so that every op has a rule or a forward-mode
derivative; functionalization turns in-place ops into pure ones. Anything that still fails
raises ``TaylorUnsupported`` naming the op, and the caller takes another exact path.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils import _pytree as pytree

from genlr.methods.taylor_rules import (
    RULES, Jet, TaylorUnsupported, generic_rule, is_jet, map_jet, value)

__all__ = ["TaylorUnsupported", "directional_derivatives", "supported_ops"]

aten = torch.ops.aten


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


def supported_ops() -> list[str]:
    """The ATen ops with a Taylor rule (others go through their forward-mode derivative)."""
    return sorted(str(op) for op in RULES)


@contextlib.contextmanager
def eager_math_kernels() -> Iterator[None]:
    """Run a model's own eager code with kernels that have derivatives of every order:
    compiled regions run uncompiled, attention in its math form, recurrent layers without
    oneDNN's or cuDNN's fused kernels. Used by the trace here and by the double-backward paths."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        stack.enter_context(_fused_kernels_off())
        set_stance = getattr(torch.compiler, "set_stance", None)
        if set_stance is not None:
            stack.enter_context(set_stance("force_eager"))
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


# --------------------------------------------------------------------- the tracer
class _Traced:
    def __init__(self, graph_module: torch.fx.GraphModule, names: list[str]) -> None:
        self.gm, self.names = graph_module, names


_CACHE_ATTR = "_genlr_taylor_cache"


def _signature(bound: nn.Module, names: list[str], batch: Any) -> tuple:
    leaves, spec = pytree.tree_flatten(batch)
    return (
        tuple(names), str(spec),
        tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else repr(x)
              for x in leaves),
        tuple(m.training for m in bound.modules()),
        tuple(getattr(m, "track_running_stats", None) for m in bound.modules()),
        torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
        torch.is_autocast_enabled("cuda") if torch.cuda.is_available() else False,
    )


def _trace(bound: nn.Module, batch: Any) -> _Traced:
    from torch.fx.experimental.proxy_tensor import make_fx

    global _DECOMPOSITIONS
    if _DECOMPOSITIONS is None:
        _DECOMPOSITIONS = _decompositions()
    state = dict(bound.named_parameters())
    state.update(dict(bound.named_buffers()))
    all_names = list(state)
    leaves, spec = pytree.tree_flatten(batch)

    def loss_of(tensors: list[torch.Tensor], batch_leaves: list[Any]) -> torch.Tensor:
        b = pytree.tree_unflatten(batch_leaves, spec)
        return torch.func.functional_call(bound, dict(zip(all_names, tensors)), (b,))

    inputs = ([state[n].detach() for n in all_names], leaves)
    try:
        with torch.no_grad(), eager_math_kernels():
            # Decompose first, then functionalize the decomposed graph: decompositions may
            # write in place (a recurrent cell's gates), functionalization removes that.
            decomposed = make_fx(loss_of, decomposition_table=_DECOMPOSITIONS)(*inputs)
            gm = make_fx(torch.func.functionalize(decomposed))(*inputs)
    except Exception as err:  # data-dependent control flow, unsupported Python, ...
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise TaylorUnsupported(f"tracing the loss failed ({type(err).__name__}: {first})") from err
    return _Traced(gm, all_names)


def directional_derivatives(bound: nn.Module, names: list[str], d: list[torch.Tensor],
                            batch: Any) -> tuple[float, float]:
    """``(<grad L, d>, d^T H d)`` of ``L = bound(batch)`` (a loss module) along ``d`` for the
    parameters named ``names``, at their current values: the first and second derivative
    of ``L(theta + s*d)`` at ``s = 0``, from one jet."""
    # Under autocast the trace records the autocast's casts (``_to_copy``, a linear rule), so
    # each jet component takes the dtype the training forward uses at that op.
    key = _signature(bound, names, batch)
    cache = bound.__dict__.setdefault(_CACHE_ATTR, {})
    traced = cache.get(key)
    if traced is None:
        if len(cache) > 8:
            cache.clear()
        traced = cache[key] = _trace(bound, batch)
    state = dict(bound.named_parameters())
    state.update(dict(bound.named_buffers()))
    tangent = dict(zip(names, d))
    inputs: list[Any] = [
        Jet(state[n].detach(), tangent[n].to(state[n].dtype), None) if n in tangent
        else state[n].detach() for n in traced.names
    ]
    inputs += pytree.tree_leaves(batch)
    # The trace holds the autocast's casts already; the interpreter's own arithmetic must
    # not be cast again.
    with torch.no_grad(), torch.autocast("cpu", enabled=False), _no_cuda_autocast():
        out = _interpret(traced.gm, inputs)
    if not is_jet(out):
        return 0.0, 0.0
    return _total(out.t), _total(out.a)


def _total(x: torch.Tensor | None) -> float:
    if x is None:
        return 0.0
    return float(x.sum(dtype=torch.float64) if x.dim() else x)


def _no_cuda_autocast() -> contextlib.AbstractContextManager:
    if torch.cuda.is_available():
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- the interpreter
# Ops whose rule returns a jet of fresh tensors, none shared with its inputs: a value of one
# of these read by a single op can be overwritten by that op (the relu rule does).
FRESH_RESULT = {aten.convolution.default, aten.addmm.default, aten.mm.default,
                aten.bmm.default, aten.relu.default}


def normalise(out: Any, val: Any, op: Any) -> Any:
    """Check a rule's result against what the traced op produced (``val``, make_fx's
    metadata): each component takes the value's shape (a component may carry only an
    operand's shape when the op broadcast it against a constant) and its dtype (a rule
    composed of several ops may promote: autocast's bf16 input, fp32 weight)."""
    if isinstance(out, Jet):
        if not isinstance(val, torch.Tensor):
            raise TaylorUnsupported(f"the rule for {op} returned a jet for a non-tensor")
        if tuple(out.v.shape) != tuple(val.shape):
            raise TaylorUnsupported(f"the rule for {op} gave shape {tuple(out.v.shape)}, "
                                    f"the op {tuple(val.shape)}")
        return map_jet(lambda c: _like(c, val, op), out)
    if isinstance(out, (tuple, list)) and isinstance(val, (tuple, list)) and len(out) == len(val):
        return type(out)(normalise(o, v, op) for o, v in zip(out, val))
    return out


def _like(c: torch.Tensor, val: torch.Tensor, op: Any) -> torch.Tensor:
    if c.shape != val.shape:
        try:
            c = c.expand(val.shape)
        except RuntimeError as err:
            raise TaylorUnsupported(f"the rule for {op} gave a component of shape "
                                    f"{tuple(c.shape)} for a value of {tuple(val.shape)}") from err
    return c if c.dtype == val.dtype else c.to(val.dtype)


def _interpret(gm: torch.fx.GraphModule, inputs: list[Any]) -> Any:
    env: dict[torch.fx.Node, Any] = {}
    it = iter(inputs)
    nodes = list(gm.graph.nodes)
    # Each value is dropped after its last use, so the three jet streams of only the live
    # layers are held at once (not of the whole network): the pass's peak memory.
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
            elif any(is_jet(x) for x in pytree.tree_leaves((args, kwargs), is_leaf=is_jet)):
                env[node] = _moving(node, args, kwargs)
            else:
                env[node] = node.target(*args, **kwargs)
            del args, kwargs
        elif node.op == "output":
            result = load(node.args[0])
            return result[0] if isinstance(result, (list, tuple)) else result
        else:
            raise TaylorUnsupported(f"graph node {node.op}")
        for dead in dead_after.get(i, ()):
            env.pop(dead, None)
    raise TaylorUnsupported("graph without output")


# Ops whose result takes only the shape (and dtype) of their input, not its values.
CONSTANT_RESULT = {aten.full_like.default, aten.zeros_like.default, aten.ones_like.default,
                   aten.empty_like.default, aten.new_zeros.default, aten.new_ones.default,
                   aten.new_full.default, aten.new_empty.default, aten.empty_strided.default}


def _moving(node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    """The jet of one op with moving inputs; any failure means this path can't."""
    op = node.target
    first = node.args[0] if node.args else None
    donated = (isinstance(first, torch.fx.Node) and len(first.users) == 1
               and first.target in FRESH_RESULT)
    val = node.meta.get("val")
    if op in CONSTANT_RESULT or (isinstance(val, torch.Tensor) and not val.is_floating_point()):
        # A comparison, a mask, an index (piecewise constant along the path), or a tensor
        # that only takes its shape from a moving one.
        args, kwargs = pytree.tree_map(value, (args, kwargs), is_leaf=is_jet)
        return op(*args, **kwargs)
    try:
        out = RULES.get(op, generic_rule)(op, args, kwargs, donated)
        return normalise(out, val, op)
    except TaylorUnsupported:
        raise
    except Exception as err:
        raise TaylorUnsupported(f"the Taylor rule for {op} failed "
                                f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
