"""Second-order Taylor-mode ("jet") propagation of ``theta + s*d`` through a traced loss.

``d^T H d`` is the second derivative of ``s -> L(theta + s*d)`` at 0. Propagating, for
every intermediate value ``x(s)``, the triple ``(x, x', x'')`` at ``s = 0`` forward through
the computation gives it at the loss, with no backward pass and no tape:

* a linear op ``f`` (views, sums, pooling by averaging, casts, ``nll_loss``) maps each
  component: ``(f x, f x', f x'')``;
* a bilinear op ``B`` (matrix product, convolution, product): ``(B(x,y), B(x',y) + B(x,y'),
  B(x'',y) + 2 B(x',y') + B(x,y''))``. The parameters move linearly in ``s``, so their
  ``x''`` is zero and a layer costs five products of its size (nested forward mode: nine);
* an elementwise ``f``: ``(f(x), f'(x) x', f''(x) x'^2 + f'(x) x'')``; ``log_softmax``,
  max pooling and BatchNorm have their own rules.

The loss is traced once per input signature with ``make_fx`` into ATen operations, so any
model built from the supported operations works, whatever its Python code. An operation
without a rule raises ``TaylorUnsupported`` and the caller falls back to double backward.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

aten = torch.ops.aten


class TaylorUnsupported(RuntimeError):
    """The traced loss uses an operation without a Taylor rule (the caller falls back)."""


@dataclass
class Jet:
    """``x(0)``, ``x'(0)`` and ``x''(0)`` of a value along the path; None means zero."""

    v: torch.Tensor
    t: torch.Tensor | None
    a: torch.Tensor | None


def _add(x: torch.Tensor | None, y: torch.Tensor | None, alpha: float = 1.0) -> torch.Tensor | None:
    if x is None:
        return None if y is None else (y if alpha == 1.0 else y * alpha)
    if y is None:
        return x
    return x + y if alpha == 1.0 else x + alpha * y


def _mul(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None or y is None else x * y


def _map(f: Callable[[torch.Tensor], torch.Tensor], j: Jet) -> Jet:
    return Jet(f(j.v), None if j.t is None else f(j.t), None if j.a is None else f(j.a))


def _unary(j: Jet, value: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor | None) -> Jet:
    """Chain rule for an elementwise ``f`` with ``f(v) = value``, ``f' = d1``, ``f'' = d2``."""
    t = _mul(d1, j.t)
    a = _add(_mul(d1, j.a), _mul(d2, None if j.t is None else j.t * j.t))
    return Jet(value, t, a)


def _bilinear(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: Any, y: Any,
              bias: Any = None, bias_shape: tuple[int, ...] | None = None) -> Jet:
    """``B(x, y) + bias`` for jets or plain tensors: ``v = B(x,y)``, ``t = B(x',y) +
    B(x,y')``, ``a = B(x'',y) + 2B(x',y') + B(x,y'')``, plus the bias's components (viewed as
    ``bias_shape``).

    Each product is its own call, accumulated in place into the first one (every call
    returns a fresh tensor): on the CPU, stacking the components into one call (a ``cat``
    along the batch) was slower -- it allocates and copies the stack, and a convolution with
    the stacked weights of a 1-channel input ran 5x slower than two plain ones.
    """
    xj = x if isinstance(x, Jet) else Jet(x, None, None)
    yj = y if isinstance(y, Jet) else Jet(y, None, None)
    bj = bias if isinstance(bias, Jet) or bias is None else Jet(bias, None, None)
    v = call(xj.v, yj.v)

    def component(terms: list[tuple[Any, Any, float]], b: torch.Tensor | None) -> torch.Tensor | None:
        out = None
        for p, q, k in terms:
            if p is None or q is None:
                continue
            if out is None:
                out = call(p, q)
                if k != 1.0:
                    out.mul_(k)
            else:
                out.add_(call(p, q), alpha=k)
        if b is not None:
            b = b.view(bias_shape) if bias_shape is not None else b
            out = b.expand_as(v).clone() if out is None else out.add_(b)
        return out

    t = component([(xj.t, yj.v, 1.0), (xj.v, yj.t, 1.0)], None if bj is None else bj.t)
    a = component([(xj.a, yj.v, 1.0), (xj.t, yj.t, 2.0), (xj.v, yj.a, 1.0)],
                  None if bj is None else bj.a)
    if bj is not None:
        v.add_(bj.v.view(bias_shape) if bias_shape is not None else bj.v)
    return Jet(v, t, a)


# ------------------------------------------------------------------------ the rules
LINEAR_FIRST_ARG = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
    aten.permute.default, aten.transpose.int, aten.t.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.clone.default,
    aten.contiguous.default, aten.slice.Tensor, aten.select.int, aten._to_copy.default,
    aten.alias.default, aten.neg.default, aten.sum.default, aten.sum.dim_IntList,
    aten.mean.default, aten.mean.dim, aten.constant_pad_nd.default, aten.avg_pool2d.default,
    aten.avg_pool1d.default, aten._adaptive_avg_pool2d.default, aten.flatten.using_ints,
    aten.index_select.default, aten.repeat.default, aten.unfold.default, aten.narrow.default,
    aten.lift_fresh_copy.default,
}


# Linear ops with several outputs (views of the first argument).
LINEAR_FIRST_ARG_MULTI = {
    aten.unbind.int, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
}


def _is_jet(x: Any) -> bool:
    return isinstance(x, Jet)


def _value(x: Any) -> torch.Tensor:
    return x.v if isinstance(x, Jet) else x


def _plain(x: Any) -> Any:
    if isinstance(x, Jet):
        raise TaylorUnsupported("a moving value reached an argument that must be constant")
    return x


# Ops whose rule returns a jet of fresh tensors, none shared with its inputs: a value of one
# of these read by a single op can be overwritten by that op (see ``_interpret``).
FRESH_RESULT = {aten.convolution.default, aten.addmm.default, aten.mm.default,
                aten.bmm.default, aten.relu.default}


def _rule(op: Any, args: tuple, kwargs: dict, donated: bool = False) -> Any:
    """The jet of ``op(*args, **kwargs)``; ``donated``: ``args[0]`` is this op's to overwrite."""
    if op in LINEAR_FIRST_ARG:
        return _map(lambda c: op(c, *args[1:], **kwargs), args[0])
    if op in LINEAR_FIRST_ARG_MULTI:
        parts = [None if c is None else op(c, *args[1:], **kwargs)
                 for c in (args[0].v, args[0].t, args[0].a)]
        return [Jet(v, None if parts[1] is None else parts[1][i],
                    None if parts[2] is None else parts[2][i]) for i, v in enumerate(parts[0])]
    if op is aten.mul.Tensor:
        x, y = args
        if not isinstance(y, (Jet, torch.Tensor)):
            return _map(lambda c: c * y, x)
        if not isinstance(x, (Jet, torch.Tensor)):
            return _map(lambda c: c * x, y)
        return _bilinear(torch.mul, x, y)
    if op in (aten.div.Tensor,):
        x, y = args
        if _is_jet(y):
            return _rule(aten.mul.Tensor, (x, _reciprocal(y)), {})
        return _map(lambda c: c / y, x)
    if op in (aten.add.Tensor, aten.sub.Tensor):
        x, y = args
        alpha = kwargs.get("alpha", 1) * (-1 if op is aten.sub.Tensor else 1)
        if not _is_jet(y):
            return Jet(op(x.v, y, **kwargs), x.t, x.a)
        if not _is_jet(x):
            return Jet(op(x, y.v, **kwargs), _scale(y.t, alpha), _scale(y.a, alpha))
        return Jet(op(x.v, y.v, **kwargs), _add(x.t, y.t, alpha), _add(x.a, y.a, alpha))
    if op is aten.rsub.Scalar:
        x, other = args[0], args[1]
        return Jet(op(x.v, other, *args[2:], **kwargs), _scale(x.t, -1.0), _scale(x.a, -1.0))
    if op in (aten.dot.default, aten.mv.default, aten.vdot.default):
        return _bilinear(op, args[0], args[1])
    if op in (aten.mm.default, aten.bmm.default):
        return _bilinear(op, args[0], args[1])
    if op is aten.addmm.default:
        bias, x, w = args
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
        if beta != 1:
            bias = _map(lambda c: c * beta, bias) if _is_jet(bias) else bias * beta
        mm = aten.mm.default if alpha == 1 else (lambda p, q: aten.mm.default(p, q).mul_(alpha))
        return _bilinear(mm, x, w, bias)
    if op is aten.convolution.default:
        x, w, bias, *rest = args
        shape = None if bias is None else (1, -1) + (1,) * (_value(x).dim() - 2)
        return _bilinear(lambda p, q: op(p, q, None, *rest), x, w, bias, shape)
    if op is aten.relu.default:
        x = args[0]
        mask = x.v > 0  # relu'' = 0; a multiply by the bool mask is 3x faster than where
        if donated:  # in place: on the CPU a fresh activation-sized tensor costs page faults
            keep = (lambda c: None if c is None else c.mul_(mask))
            return Jet(torch.relu_(x.v), keep(x.t), keep(x.a))
        keep = (lambda c: None if c is None else c * mask)
        return Jet(torch.relu(x.v), keep(x.t), keep(x.a))
    if op is aten.tanh.default:
        v = torch.tanh(args[0].v)
        d1 = 1 - v * v
        return _unary(args[0], v, d1, -2 * v * d1)
    if op is aten.sigmoid.default:
        v = torch.sigmoid(args[0].v)
        d1 = v * (1 - v)
        return _unary(args[0], v, d1, d1 * (1 - 2 * v))
    if op is aten.exp.default:
        v = torch.exp(args[0].v)
        return _unary(args[0], v, v, v)
    if op is aten.log.default:
        x = args[0].v
        return _unary(args[0], torch.log(x), 1 / x, -1 / (x * x))
    if op is aten.rsqrt.default:
        x = args[0].v
        v = torch.rsqrt(x)
        return _unary(args[0], v, -0.5 * v / x, 0.75 * v / (x * x))
    if op is aten.sqrt.default:
        x = args[0].v
        v = torch.sqrt(x)
        return _unary(args[0], v, 0.5 / v, -0.25 / (v * x))
    if op is aten.reciprocal.default:
        return _reciprocal(args[0])
    if op is aten.pow.Tensor_Scalar:
        x, k = args[0], args[1]
        if k == 2:
            return _unary(x, x.v * x.v, 2 * x.v, torch.full_like(x.v, 2.0))
        return _unary(x, x.v**k, k * x.v ** (k - 1), k * (k - 1) * x.v ** (k - 2))
    if op is aten.gelu.default:
        return _gelu(args[0], kwargs.get("approximate", args[1] if len(args) > 1 else "none"))
    if op is aten.silu.default:
        x = args[0].v
        s = torch.sigmoid(x)
        d1 = s * (1 + x * (1 - s))
        d2 = s * (1 - s) * (2 + x * (1 - 2 * s))
        return _unary(args[0], x * s, d1, d2)
    if op is aten.softplus.default:
        x = args[0]
        beta = args[1] if len(args) > 1 else 1
        threshold = args[2] if len(args) > 2 else 20
        s = torch.sigmoid(beta * x.v)
        linear = beta * x.v > threshold
        d1 = torch.where(linear, torch.ones_like(s), s)
        d2 = torch.where(linear, torch.zeros_like(s), beta * s * (1 - s))
        return _unary(x, op(x.v, *args[1:]), d1, d2)
    if op is aten._log_softmax.default:
        x, dim = args[0], args[1]
        v = op(x.v, *args[1:])
        p = v.exp()
        mean_t = (p * x.t).sum(dim, keepdim=True) if x.t is not None else None
        t = None if x.t is None else x.t - mean_t
        a = None
        if x.a is not None:
            a = x.a - (p * x.a).sum(dim, keepdim=True)
        if x.t is not None:
            var = (p * x.t * x.t).sum(dim, keepdim=True) - mean_t * mean_t
            a = _add(a, -var.expand_as(v))
        return Jet(v, t, a)
    if op is aten._softmax.default:
        x, dim = args[0], args[1]
        logp = _rule(aten._log_softmax.default, (x, dim, args[2]), {})
        return _rule(aten.exp.default, (logp,), {})
    if op in (aten.nll_loss_forward.default,):
        x, *rest = args
        out = [op(c, *rest, **kwargs) if c is not None else None for c in (x.v, x.t, x.a)]
        return (Jet(out[0][0], out[1][0] if out[1] else None, out[2][0] if out[2] else None),
                out[0][1])
    if op is aten.max_pool2d_with_indices.default:
        x = args[0]
        v = x.v
        if v.device.type == "cpu" and v.dim() == 4:
            # The CPU kernel is 2x faster on channels-last input (same values and indices).
            v = v.contiguous(memory_format=torch.channels_last)
        v, idx = op(v, *args[1:], **kwargs)
        v, idx = v.contiguous(), idx.contiguous()
        return (Jet(v, _gather_pool(x.t, idx), _gather_pool(x.a, idx)), idx)
    if op is aten._native_batch_norm_legit.no_stats:
        return _batch_norm_batch_stats(*args)
    if op is aten._native_batch_norm_legit_functional.default:
        x, w, b, rm, rv, training, momentum, eps = args
        if not training:
            raise TaylorUnsupported("functional batch norm in eval mode")
        out, mean, invstd = _batch_norm_batch_stats(x, w, b, training, momentum, eps)
        return out, mean, invstd, _plain(rm), _plain(rv)
    if op is aten._native_batch_norm_legit_no_training.default:
        x, w, b, rm, rv, momentum, eps = args
        return _batch_norm_running_stats(x, w, b, rm, rv, eps)
    if op is aten.native_batch_norm.default:
        x, w, b, rm, rv, training, momentum, eps = args
        if training:
            if rm is not None or rv is not None:
                raise TaylorUnsupported("batch norm that updates its running statistics")
            return _batch_norm_batch_stats(x, w, b, training, momentum, eps)
        return _batch_norm_running_stats(x, w, b, rm, rv, eps)
    if op is aten.native_layer_norm.default:
        x, normalized_shape, w, b, eps = args
        if not _is_jet(x):
            raise TaylorUnsupported("layer norm of a constant input with moving affine parameters")
        dims = list(range(x.v.dim() - len(normalized_shape), x.v.dim()))
        mean = _rule(aten.mean.dim, (x, dims, True), {})
        centred = _rule(aten.sub.Tensor, (x, mean), {})
        var = _rule(aten.mean.dim, (_rule(aten.mul.Tensor, (centred, centred), {}), dims, True), {})
        rstd = _rule(aten.rsqrt.default, (_rule(aten.add.Tensor, (var, eps), {}),), {})
        out = _affine(_rule(aten.mul.Tensor, (centred, rstd), {}), w, b, tuple(normalized_shape))
        return out, mean.v, rstd.v
    if op is aten.where.self:
        cond, x, y = args
        xj = x if _is_jet(x) else Jet(x, None, None)
        yj = y if _is_jet(y) else Jet(y, None, None)

        def pick(p, q, like):
            if p is None and q is None:
                return None
            p = torch.zeros_like(like) if p is None else p
            q = torch.zeros_like(like) if q is None else q
            return torch.where(cond, p, q)
        v = torch.where(cond, xj.v, yj.v)
        return Jet(v, pick(xj.t, yj.t, v), pick(xj.a, yj.a, v))
    if op is aten.cat.default:
        tensors = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        jets = [x if _is_jet(x) else Jet(x, None, None) for x in tensors]

        def cat_of(field: str) -> torch.Tensor | None:
            parts = [getattr(j, field) for j in jets]
            if all(p is None for p in parts):
                return None
            return torch.cat([torch.zeros_like(j.v) if p is None else p
                              for j, p in zip(jets, parts)], dim)
        return Jet(torch.cat([j.v for j in jets], dim), cat_of("t"), cat_of("a"))
    raise TaylorUnsupported(f"no Taylor rule for {op}")


def _scale(x: torch.Tensor | None, alpha: float) -> torch.Tensor | None:
    return None if x is None else (x if alpha == 1 else x * alpha)


def _reciprocal(j: Jet) -> Jet:
    v = 1 / j.v
    return _unary(j, v, -v * v, 2 * v * v * v)


def _gelu(j: Jet, approximate: str) -> Jet:
    if approximate != "none":
        raise TaylorUnsupported("gelu(approximate='tanh')")
    x = j.v
    cdf = 0.5 * (1 + torch.erf(x * 0.7071067811865476))
    pdf = torch.exp(-0.5 * x * x) * 0.3989422804014327
    return _unary(j, x * cdf, cdf + x * pdf, pdf * (2 - x * x))


def _gather_pool(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    if x is None:
        return None
    flat = x.flatten(-2)
    return flat.gather(-1, idx.flatten(-2)).view(idx.shape)


def _affine(xn: Jet, w: Any, b: Any, shape) -> Jet:
    out = xn
    if w is not None:
        w = _map(lambda c: c.view(shape), w) if _is_jet(w) else w.view(shape)
        out = _rule(aten.mul.Tensor, (out, w), {})
    if b is not None:
        b = _map(lambda c: c.view(shape), b) if _is_jet(b) else b.view(shape)
        out = _rule(aten.add.Tensor, (out, b), {})
    return out


def _batch_norm_running_stats(x, w, b, rm, rv, eps):
    if not _is_jet(x):
        raise TaylorUnsupported("batch norm of a constant input with moving affine parameters")
    shape = (1, -1) + (1,) * (x.v.dim() - 2)
    invstd = torch.rsqrt(_plain(rv) + eps).view(shape)
    xn = _map(lambda c: c * invstd, _rule(aten.sub.Tensor, (x, _plain(rm).view(shape)), {}))
    return _affine(xn, w, b, shape), torch.empty(0), torch.empty(0)


def _batch_norm_batch_stats(x, w, b, training, momentum, eps):
    """BatchNorm with the batch's statistics, composed from rules above."""
    if not _is_jet(x):
        raise TaylorUnsupported("batch norm of a constant input with moving affine parameters")
    dims = [0] + list(range(2, x.v.dim()))
    shape = (1, -1) + (1,) * (x.v.dim() - 2)
    mean = _rule(aten.mean.dim, (x, dims, True), {})
    centred = _rule(aten.sub.Tensor, (x, mean), {})
    var = _rule(aten.mean.dim, (_rule(aten.mul.Tensor, (centred, centred), {}), dims, True), {})
    invstd = _rule(aten.rsqrt.default, (_rule(aten.add.Tensor, (var, eps), {}),), {})
    out = _affine(_rule(aten.mul.Tensor, (centred, invstd), {}), w, b, shape)
    return out, mean.v.flatten(), invstd.v.flatten()


# --------------------------------------------------------------------- the tracer
class _Traced:
    def __init__(self, graph_module: torch.fx.GraphModule, spec: Any) -> None:
        self.gm, self.spec = graph_module, spec


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


def _trace(bound: nn.Module, names: list[str], batch: Any) -> _Traced:
    from torch.fx.experimental.proxy_tensor import make_fx

    state = dict(bound.named_parameters())
    state.update(dict(bound.named_buffers()))
    all_names = list(state)
    leaves, spec = pytree.tree_flatten(batch)

    def loss_of(tensors: list[torch.Tensor], batch_leaves: list[Any]) -> torch.Tensor:
        b = pytree.tree_unflatten(batch_leaves, spec)
        return torch.func.functional_call(bound, dict(zip(all_names, tensors)), (b,))

    try:
        with torch.no_grad():
            # functionalize: in-place ops (ReLU(inplace=True)) are traced as their pure forms.
            gm = make_fx(torch.func.functionalize(loss_of))(
                [state[n].detach() for n in all_names], leaves)
    except Exception as err:  # data-dependent control flow, unsupported Python, ...
        raise TaylorUnsupported(f"tracing the loss failed: {err}") from err
    return _Traced(gm, (all_names, spec))


def directional_derivatives(bound: nn.Module, named: tuple[list[str], dict],
                            d: list[torch.Tensor], batch: Any) -> tuple[float, float]:
    """``(<grad L, d>, d^T H d)`` of ``L = bound(batch)`` (a loss module) along ``d`` for the
    parameters named ``named[0]``, at their current values: the first and second
    derivative of ``L(theta + s*d)`` at ``s = 0``, from one jet."""
    names = named[0]
    # Under autocast the trace records the autocast's casts (``_to_copy``, a linear rule), so
    # each jet component takes the dtype the training forward uses at that op; the
    # interpreter below runs with autocast off so that nothing is cast twice.
    key = _signature(bound, names, batch)
    cache = bound.__dict__.setdefault(_CACHE_ATTR, {})
    traced = cache.get(key)
    if traced is None:
        if len(cache) > 8:
            cache.clear()
        traced = cache[key] = _trace(bound, names, batch)
    all_names, _ = traced.spec
    state = dict(bound.named_parameters())
    state.update(dict(bound.named_buffers()))
    tangent = dict(zip(names, d))
    inputs: list[Any] = [
        Jet(state[n].detach(), tangent[n].to(state[n].dtype), None) if n in tangent
        else state[n].detach() for n in all_names
    ]
    inputs += pytree.tree_leaves(batch)
    # The trace holds the autocast's casts already; the interpreter's own arithmetic must
    # not be cast again.
    with torch.no_grad(), torch.autocast("cpu", enabled=False), _no_cuda_autocast():
        out = _interpret(traced.gm, inputs)
    if not _is_jet(out):
        return 0.0, 0.0
    return _total(out.t), _total(out.a)


def _total(x: torch.Tensor | None) -> float:
    if x is None:
        return 0.0
    return float(x.sum(dtype=torch.float64) if x.dim() else x)


INPLACE_VIEWS = {
    aten.squeeze_.dim: aten.squeeze.dim, aten.squeeze_.dims: aten.squeeze.dims,
    aten.squeeze_.default: aten.squeeze.default, aten.unsqueeze_.default: aten.unsqueeze.default,
    aten.t_.default: aten.t.default, aten.transpose_.default: aten.transpose.int,
}


def _no_cuda_autocast():
    import contextlib

    if torch.cuda.is_available():
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


def _as_traced_dtype(out: Any, val: Any) -> Any:
    """Cast a rule's jet to the dtype the traced op produced (``val``: make_fx's metadata)."""
    if isinstance(out, Jet) and isinstance(val, torch.Tensor) and out.v.dtype != val.dtype:
        return _map(lambda c: c.to(val.dtype), out)
    if isinstance(out, tuple) and isinstance(val, (tuple, list)) and len(out) == len(val):
        return tuple(_as_traced_dtype(o, v) for o, v in zip(out, val))
    return out


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
            elif node.target in INPLACE_VIEWS:  # the input is that view from here on, too
                value = args[0]
                func = INPLACE_VIEWS[node.target]
                out = _map(lambda c: func(c, *args[1:], **kwargs), value) if _is_jet(value) \
                    else func(value, *args[1:], **kwargs)
                env[node] = out
                if isinstance(node.args[0], torch.fx.Node):
                    env[node.args[0]] = out
            else:
                moving = any(_is_jet(x) for x in pytree.tree_leaves((args, kwargs)))
                first = node.args[0] if node.args else None
                donated = (isinstance(first, torch.fx.Node) and len(first.users) == 1
                           and first.target in FRESH_RESULT)
                env[node] = (_rule(node.target, args, kwargs, donated) if moving
                             else node.target(*args, **kwargs))
                if moving:  # a rule composed of several ops may promote (autocast: bf16 BN
                    env[node] = _as_traced_dtype(env[node], node.meta.get("val"))  # input, fp32 weight)
            del args, kwargs
        elif node.op == "output":
            result = load(node.args[0])
            return result[0] if isinstance(result, (list, tuple)) else result
        else:
            raise TaylorUnsupported(f"graph node {node.op}")
        for dead in dead_after.get(i, ()):
            env.pop(dead, None)
    raise TaylorUnsupported("graph without output")
