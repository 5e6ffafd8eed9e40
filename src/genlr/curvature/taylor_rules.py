"""Second-order Taylor rules of ATen operations: how a jet ``(x, x', x'')`` passes an op.

Along the path ``theta + s*d`` every intermediate value ``x(s)`` has a jet: its value, first
and second derivative in ``s`` at ``s = 0``. ``RULES[op]`` maps the jets (or plain tensors,
for values that do not move) of an op's inputs to the jet of its output:

* a linear op ``f`` maps each component: ``(f x, f x', f x'')``;
* a bilinear op ``B`` (matrix product, convolution, product): ``(B(x,y), B(x',y) + B(x,y'),
  B(x'',y) + 2 B(x',y') + B(x,y''))``;
* an elementwise ``f``: ``(f(x), f'(x) x', f''(x) x'^2 + f'(x) x'')``; piecewise functions
  (relu, abs, clamp, max) take the derivative autograd takes at their kinks, so the two
  paths agree there too;
* normalisations (batch, layer and group norm) and softmax are composed of the rules above.

An op without a rule here goes through ``generic_rule`` (nested forward-mode AD of that op
alone, see ``genlr.curvature.taylor``). The graph reaching these rules has been reduced to
PyTorch's core ATen operations by its own decomposition tables, so the list is short.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from genlr.messages import one_line

aten = torch.ops.aten


class TaylorUnsupported(RuntimeError):
    """This op (or this use of it) has no Taylor rule; the caller takes another path."""


@dataclass
class Jet:
    """``x(0)``, ``x'(0)`` and ``x''(0)`` of a value along the path; None means zero."""

    v: torch.Tensor
    t: torch.Tensor | None
    a: torch.Tensor | None


Rule = Callable[..., Any]  # rule(op, args, kwargs) -> Jet | tuple | list
RULES: dict[Any, Rule] = {}
# Rules that may overwrite their input, used where nothing else reads it (the interpreter's
# ``donated``): on the CPU a fresh activation-sized tensor costs page faults.
IN_PLACE: dict[Any, Rule] = {}


def rule(*ops: Any) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn
    return register


# ------------------------------------------------------------------------ jet algebra
def is_jet(x: Any) -> bool:
    return isinstance(x, Jet)


def value(x: Any) -> Any:
    return x.v if isinstance(x, Jet) else x


def as_jet(x: Any) -> Jet:
    return x if isinstance(x, Jet) else Jet(x, None, None)


def plain(x: Any) -> Any:
    if isinstance(x, Jet):
        raise TaylorUnsupported("a moving value reached an argument that must be constant")
    return x


def add(x: torch.Tensor | None, y: torch.Tensor | None, alpha: float = 1.0) -> torch.Tensor | None:
    if x is None:
        return scale(y, alpha)
    if y is None:
        return x
    return x + y if alpha == 1 else x + alpha * y


def mul(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None or y is None else x * y


def scale(x: torch.Tensor | None, alpha: float) -> torch.Tensor | None:
    return None if x is None else (x if alpha == 1 else x * alpha)


def map_jet(f: Callable[[torch.Tensor], torch.Tensor], j: Jet) -> Jet:
    return Jet(f(j.v), None if j.t is None else f(j.t), None if j.a is None else f(j.a))


def unary(j: Jet, out: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor | None) -> Jet:
    """Chain rule for an elementwise ``f`` with ``f(v) = out``, ``f' = d1``, ``f'' = d2``:
    ``(f(x), f' x', f'' x'^2 + f' x'')``, accumulated in place into fresh tensors (on the
    CPU a new activation-sized tensor costs more than the arithmetic on it)."""
    t = mul(d1, j.t)
    curvature = None if j.t is None or d2 is None else (j.t * j.t).mul_(d2)
    if j.a is None:
        return Jet(out, t, curvature)
    a = d1 * j.a if curvature is None else curvature.addcmul_(d1, j.a)
    return Jet(out, t, a)


def bilinear(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: Any, y: Any,
             bias: Any = None, bias_shape: tuple[int, ...] | None = None) -> Jet:
    """``B(x, y) + bias`` for jets or plain tensors (the bias viewed as ``bias_shape``).

    Each product is its own call, accumulated in place into the first one (every call
    returns a fresh tensor): on the CPU, stacking the components into one call (a ``cat``
    along the batch) was slower -- it allocates and copies the stack.
    """
    xj, yj = as_jet(x), as_jet(y)
    bj = None if bias is None else as_jet(bias)
    v = call(xj.v, yj.v)

    def view(b: torch.Tensor) -> torch.Tensor:
        return b.view(bias_shape) if bias_shape is not None else b

    def component(terms: list[tuple[Any, Any, float]], b: torch.Tensor | None) -> torch.Tensor | None:
        out = None
        for p, q, k in terms:
            if p is None or q is None:
                continue
            if k != 1.0:  # on the smaller operand: never ``add(B, B, alpha=k)``, which
                # inductor's mm_plus_mm pattern (torch 2.14) compiles as if alpha were 1
                p, q = (p * k, q) if p.numel() <= q.numel() else (p, q * k)
            out = call(p, q) if out is None else out.add_(call(p, q))
        if b is not None:
            out = view(b).expand_as(v).clone() if out is None else out.add_(view(b))
        return out

    t = component([(xj.t, yj.v, 1.0), (xj.v, yj.t, 1.0)], None if bj is None else bj.t)
    a = component([(xj.a, yj.v, 1.0), (xj.t, yj.t, 2.0), (xj.v, yj.a, 1.0)],
                  None if bj is None else bj.a)
    if bj is not None:
        v = v.add_(view(bj.v))
    return Jet(v, t, a)


def apply(op: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` on jets (through its rule) or on plain values (directly), inside a rule
    composed of others. A component carrying only a moving operand's shape (broadcast
    against a constant) is expanded to the value's, so that a reduction after it sums it
    over the broadcast dimensions too."""
    if not any(is_jet(x) for x in pytree.tree_leaves((args, kwargs), is_leaf=is_jet)):
        return op(*args, **kwargs)
    out = RULES[op](op, args, kwargs)
    if isinstance(out, Jet):
        return map_jet(lambda c: c if c.shape == out.v.shape else c.expand(out.v.shape), out)
    return out


# ------------------------------------------------------------------ linear operations
LINEAR_IN_FIRST = (
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
    aten.permute.default, aten.transpose.int, aten.t.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.clone.default,
    aten.slice.Tensor, aten.select.int, aten._to_copy.default, aten.alias.default,
    aten.lift_fresh_copy.default, aten.neg.default, aten.sum.default, aten.sum.dim_IntList,
    aten.mean.default, aten.mean.dim, aten.avg_pool1d.default, aten.avg_pool2d.default,
    aten.avg_pool3d.default, aten._adaptive_avg_pool2d.default, aten.flatten.using_ints,
    aten.index_select.default, aten.repeat.default, aten.narrow.default, aten.embedding.default,
    aten.gather.default, aten.index.Tensor, aten._unsafe_index.Tensor, aten.cumsum.default,
    aten.diagonal.default, aten.tril.default, aten.triu.default, aten.roll.default,
    aten.flip.default, aten.mul.Scalar, aten.div.Scalar, aten.upsample_nearest2d.default,
    aten.upsample_bilinear2d.default,
)
# Linear ops with several outputs, all linear in the first argument.
SPLITS = (aten.unbind.int, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
# Ops linear in several arguments together (the positions given): a constant there
# contributes to the value only.
JOINTLY_LINEAR = {
    aten.cat.default: (0,), aten.stack.default: (0,),
    aten.slice_scatter.default: (0, 1), aten.select_scatter.default: (0, 1),
    aten.index_put.default: (0, 2), aten.scatter.src: (0, 3), aten.scatter_add.default: (0, 3),
    aten.index_add.default: (0, 3), aten.copy.default: (0, 1),
}


def _constant_args(args: tuple, skip: int = 1) -> tuple:
    return tuple(plain(x) for x in args[skip:])


# A component need not have its value's memory layout (a broadcast bias's tangent is an
# expanded view): a view of it becomes a reshape, which copies only where it must.
AS_RESHAPE = {aten.view.default: aten.reshape.default, aten._unsafe_view.default: aten.reshape.default}


@rule(*LINEAR_IN_FIRST)
def _linear(op, args, kwargs):
    rest = _constant_args(args)
    x = as_jet(args[0])
    component = AS_RESHAPE.get(op, op)
    return Jet(op(x.v, *rest, **kwargs),
               None if x.t is None else component(x.t, *rest, **kwargs),
               None if x.a is None else component(x.a, *rest, **kwargs))


@rule(*SPLITS)
def _split(op, args, kwargs):
    rest = _constant_args(args)
    x = as_jet(args[0])
    parts = [None if c is None else op(c, *rest, **kwargs) for c in (x.v, x.t, x.a)]
    return [Jet(v, None if parts[1] is None else parts[1][i], None if parts[2] is None else parts[2][i])
            for i, v in enumerate(parts[0])]


@rule(*JOINTLY_LINEAR)
def _jointly_linear(op, args, kwargs):
    positions = JOINTLY_LINEAR[op]
    for i, x in enumerate(args):
        if i not in positions:
            plain(x)

    def component(field: str) -> torch.Tensor | None:
        moving = False

        def pick(x: Any) -> Any:
            nonlocal moving
            if isinstance(x, Jet):
                c = getattr(x, field)
                moving = moving or c is not None
                return torch.zeros_like(x.v) if c is None else c
            return torch.zeros_like(x) if isinstance(x, torch.Tensor) else x

        parts = [pytree.tree_map(pick, x, is_leaf=is_jet) if i in positions else x
                 for i, x in enumerate(args)]
        return op(*parts, **kwargs) if moving else None

    values = [pytree.tree_map(value, x, is_leaf=is_jet) for x in args]
    return Jet(op(*values, **kwargs), component("t"), component("a"))


@rule(aten.where.self)
def _where(op, args, kwargs):
    cond, x, y = plain(args[0]), as_jet(args[1]), as_jet(args[2])

    def pick(p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor | None:
        if p is None and q is None:
            return None
        return torch.where(cond, 0.0 if p is None else p, 0.0 if q is None else q)
    return Jet(torch.where(cond, x.v, y.v), pick(x.t, y.t), pick(x.a, y.a))


@rule(aten.constant_pad_nd.default)
def _constant_pad(op, args, kwargs):
    x, pad = as_jet(args[0]), plain(args[1])
    fill = plain(args[2]) if len(args) > 2 else kwargs.get("value", 0)
    zero = (lambda c: None if c is None else op(c, pad, 0))  # the padding does not move
    return Jet(op(x.v, pad, fill), zero(x.t), zero(x.a))


@rule(aten.masked_fill.Scalar)
def _masked_fill(op, args, kwargs):
    x, mask, fill = as_jet(args[0]), plain(args[1]), plain(args[2])
    zero = (lambda c: None if c is None else op(c, mask, 0))
    return Jet(op(x.v, mask, fill), zero(x.t), zero(x.a))


@rule(aten.masked_fill.Tensor)
def _masked_fill_tensor(op, args, kwargs):
    x, mask, fill = args
    return apply(aten.where.self, plain(mask), fill, x)


@rule(aten.add.Tensor, aten.sub.Tensor)
def _add_sub(op, args, kwargs):
    x, y = args
    alpha = kwargs.get("alpha", 1) * (-1 if op is aten.sub.Tensor else 1)
    xj, yj = as_jet(x), as_jet(y)
    # A component's shape may be an operand's, smaller than the broadcast result: the
    # interpreter expands every component to the value's shape (see ``taylor.normalise``).
    return Jet(op(xj.v, yj.v, **kwargs), add(xj.t, yj.t, alpha), add(xj.a, yj.a, alpha))


@rule(aten.add.Scalar, aten.sub.Scalar)
def _shift(op, args, kwargs):
    x = as_jet(args[0])
    return Jet(op(x.v, *_constant_args(args), **kwargs), x.t, x.a)


@rule(aten.rsub.Scalar)
def _rsub(op, args, kwargs):
    x = as_jet(args[0])
    alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
    return Jet(op(x.v, *_constant_args(args), **kwargs), scale(x.t, -alpha), scale(x.a, -alpha))


# ---------------------------------------------------------------- bilinear operations
@rule(aten.mul.Tensor)
def _mul(op, args, kwargs):
    x, y = args
    if not isinstance(y, (Jet, torch.Tensor)):
        return map_jet(lambda c: c * y, x)
    if not isinstance(x, (Jet, torch.Tensor)):
        return map_jet(lambda c: c * x, y)
    return bilinear(torch.mul, x, y)


@rule(aten.div.Tensor)
def _div(op, args, kwargs):
    x, y = args
    if is_jet(y):
        return apply(aten.mul.Tensor, x, reciprocal(y))
    return map_jet(lambda c: c / y, as_jet(x))


@rule(aten.mm.default, aten.bmm.default, aten.dot.default, aten.mv.default)
def _product(op, args, kwargs):
    return bilinear(op, args[0], args[1])


@rule(aten.addmm.default, aten.baddbmm.default)
def _addmm(op, args, kwargs):
    bias, x, w = args
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if beta != 1:
        bias = map_jet(lambda c: c * beta, bias) if is_jet(bias) else bias * beta
    base = aten.mm.default if op is aten.addmm.default else aten.bmm.default
    product = base if alpha == 1 else (lambda p, q: base(p, q).mul_(alpha))
    return bilinear(product, x, w, bias)


@rule(aten._grouped_mm.default)
def _grouped_mm(op, args, kwargs):
    """Per group ``g``, ``x_g @ w_g``: bilinear in the two operands, the groups' offsets
    constant (the routing is piecewise constant along the path)."""
    names = ("offs", "bias", "out_dtype")
    extra = dict(zip(names, args[2:]), **kwargs)
    offs, bias, out_dtype = (plain(extra.get(n)) for n in names)
    if bias is not None:
        raise TaylorUnsupported("grouped_mm with a bias")

    def product(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        # a component may be a broadcast view (stride 0), which the kernel refuses
        p, q = (c if 0 not in c.stride() else c.contiguous() for c in (p, q))
        return op(p, q, offs, None, out_dtype)
    return bilinear(product, args[0], args[1])


@rule(aten.convolution.default)
def _convolution(op, args, kwargs):
    x, w, bias, *rest = args
    rest = [plain(r) for r in rest]
    shape = None if bias is None else (1, -1) + (1,) * (value(x).dim() - 2)
    return bilinear(lambda p, q: op(p, q, None, *rest), x, w, bias, shape)


# -------------------------------------------------------------- elementwise functions
def reciprocal(j: Jet) -> Jet:
    v = 1 / j.v
    return unary(j, v, -v * v, 2 * v * v * v)


@rule(aten.reciprocal.default)
def _reciprocal(op, args, kwargs):
    return reciprocal(as_jet(args[0]))


@rule(aten.relu.default)
def _relu(op, args, kwargs):
    x = as_jet(args[0])
    mask = x.v > 0  # as autograd: relu'(0) = 0; relu'' = 0
    keep = (lambda c: None if c is None else c * mask)
    return Jet(torch.relu(x.v), keep(x.t), keep(x.a))


def _relu_in_place(op, args, kwargs):
    x = as_jet(args[0])
    mask = x.v > 0
    keep = (lambda c: None if c is None else c.mul_(mask))
    return Jet(torch.relu_(x.v), keep(x.t), keep(x.a))


IN_PLACE[aten.relu.default] = _relu_in_place


def _piecewise_linear(x: Jet, out: torch.Tensor, slope: torch.Tensor) -> Jet:
    return Jet(out, mul(slope, x.t), mul(slope, x.a))


@rule(aten.leaky_relu.default)
def _leaky_relu(op, args, kwargs):
    x = as_jet(args[0])
    negative = plain(args[1]) if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    slope = torch.where(x.v > 0, 1.0, negative).to(x.v.dtype)
    return _piecewise_linear(x, op(x.v, negative), slope)


@rule(aten.abs.default)
def _abs(op, args, kwargs):
    x = as_jet(args[0])
    return _piecewise_linear(x, x.v.abs(), x.v.sign())


@rule(aten.clamp.default, aten.hardtanh.default)
def _clamp(op, args, kwargs):
    x = as_jet(args[0])
    low, high = (plain(a) for a in (list(args[1:]) + [None, None])[:2])
    if op is aten.hardtanh.default:
        low = -1.0 if low is None else low
        high = 1.0 if high is None else high
    inside = torch.ones_like(x.v, dtype=torch.bool)
    if low is not None:
        inside &= x.v >= low if op is aten.clamp.default else x.v > low
    if high is not None:
        inside &= x.v <= high if op is aten.clamp.default else x.v < high
    return _piecewise_linear(x, op(x.v, low, high), inside.to(x.v.dtype))


@rule(aten.tanh.default)
def _tanh(op, args, kwargs):
    v = torch.tanh(args[0].v)
    d1 = 1 - v * v
    return unary(args[0], v, d1, -2 * v * d1)


@rule(aten.sigmoid.default)
def _sigmoid(op, args, kwargs):
    v = torch.sigmoid(args[0].v)
    d1 = v * (1 - v)
    return unary(args[0], v, d1, d1 * (1 - 2 * v))


@rule(aten.exp.default)
def _exp(op, args, kwargs):
    v = torch.exp(args[0].v)
    return unary(args[0], v, v, v)


@rule(aten.expm1.default)
def _expm1(op, args, kwargs):
    e = torch.exp(args[0].v)
    return unary(args[0], torch.expm1(args[0].v), e, e)


@rule(aten.log.default)
def _log(op, args, kwargs):
    x = args[0].v
    return unary(args[0], torch.log(x), 1 / x, -1 / (x * x))


@rule(aten.log1p.default)
def _log1p(op, args, kwargs):
    x = args[0].v
    r = 1 / (1 + x)
    return unary(args[0], torch.log1p(x), r, -r * r)


@rule(aten.rsqrt.default)
def _rsqrt(op, args, kwargs):
    x = args[0].v
    v = torch.rsqrt(x)
    return unary(args[0], v, -0.5 * v / x, 0.75 * v / (x * x))


@rule(aten.sqrt.default)
def _sqrt(op, args, kwargs):
    x = args[0].v
    v = torch.sqrt(x)
    return unary(args[0], v, 0.5 / v, -0.25 / (v * x))


@rule(aten.sin.default)
def _sin(op, args, kwargs):
    x = args[0].v
    v = torch.sin(x)
    return unary(args[0], v, torch.cos(x), -v)


@rule(aten.cos.default)
def _cos(op, args, kwargs):
    x = args[0].v
    v = torch.cos(x)
    return unary(args[0], v, -torch.sin(x), -v)


@rule(aten.erf.default)
def _erf(op, args, kwargs):
    x = args[0].v
    d1 = torch.exp(-x * x) * (2 / math.sqrt(math.pi))
    return unary(args[0], torch.erf(x), d1, -2 * x * d1)


@rule(aten.pow.Tensor_Scalar)
def _pow(op, args, kwargs):
    x, k = args[0], plain(args[1])
    if k == 2:
        return unary(x, x.v * x.v, 2 * x.v, torch.full_like(x.v, 2.0))
    if k == 1:
        return x
    if k == 0:
        return Jet(torch.ones_like(x.v), None, None)
    return unary(x, x.v**k, k * x.v ** (k - 1), k * (k - 1) * x.v ** (k - 2))


@rule(aten.pow.Tensor_Tensor, aten.pow.Scalar)
def _pow_general(op, args, kwargs):
    base, exponent = args  # base**exponent = exp(exponent * log(base))
    log_base = apply(aten.log.default, base) if isinstance(base, (Jet, torch.Tensor)) \
        else math.log(base)
    return apply(aten.exp.default, apply(aten.mul.Tensor, exponent, log_base))


@rule(aten.gelu.default)
def _gelu(op, args, kwargs):
    j = args[0]
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    x = j.v
    if approximate == "none":
        square = x * x
        pdf = square.mul(-0.5).exp_().mul_(0.3989422804014327)
        cdf = (x * 0.7071067811865476).erf_().add_(1.0).mul_(0.5)
        d1 = torch.addcmul(cdf, x, pdf)
        return unary(j, cdf.mul_(x), d1, pdf.mul_(square.neg_().add_(2.0)))
    # tanh form: 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
    c, k = math.sqrt(2 / math.pi), 0.044715
    u = c * (x + k * x ** 3)
    th = torch.tanh(u)
    sech2 = 1 - th * th
    du, ddu = c * (1 + 3 * k * x * x), c * 6 * k * x
    d1 = 0.5 * (1 + th) + 0.5 * x * sech2 * du
    d2 = sech2 * du + 0.5 * x * sech2 * (ddu - 2 * th * du * du)
    return unary(j, op(x, approximate=approximate), d1, d2)


@rule(aten.silu.default)
def _silu(op, args, kwargs):
    x = args[0].v
    s = torch.sigmoid(x)
    d1 = s * (1 + x * (1 - s))
    d2 = s * (1 - s) * (2 + x * (1 - 2 * s))
    return unary(args[0], x * s, d1, d2)


@rule(aten.softplus.default)
def _softplus(op, args, kwargs):
    x = args[0]
    beta = plain(args[1]) if len(args) > 1 else 1
    threshold = plain(args[2]) if len(args) > 2 else 20
    s = torch.sigmoid(beta * x.v)
    linear = beta * x.v > threshold
    d1 = torch.where(linear, torch.ones_like(s), s)
    d2 = torch.where(linear, torch.zeros_like(s), beta * s * (1 - s))
    return unary(x, op(x.v, beta, threshold), d1, d2)


@rule(aten.elu.default)
def _elu(op, args, kwargs):
    x = args[0]
    alpha, scale_, input_scale = ([plain(a) for a in args[1:]] + [1.0, 1.0, 1.0])[:3]
    e = torch.exp(x.v * input_scale) * (scale_ * alpha * input_scale)
    positive = x.v > 0
    d1 = torch.where(positive, torch.full_like(e, scale_), e)
    d2 = torch.where(positive, torch.zeros_like(e), e * input_scale)
    return unary(x, op(x.v, alpha, scale_, input_scale), d1, d2)


# ------------------------------------------------------------------- extrema
# Piecewise: the jet of the argument that wins. At ties autograd's conventions, so that the
# Taylor pass and double backward agree there too: ``maximum``/``minimum`` and the value
# reductions (``amax``, ``max()``) share the derivative evenly among the tied arguments;
# ``max.dim`` takes the one its index names.
def _share(mask: torch.Tensor, c: torch.Tensor | None, dims: list[int], keepdim: bool,
           count: torch.Tensor) -> torch.Tensor | None:
    if c is None:
        return None
    return (c * mask).sum(dims, keepdim=keepdim) / count


@rule(aten.maximum.default, aten.minimum.default)
def _pairwise_extremum(op, args, kwargs):
    a, b = as_jet(args[0]), as_jet(args[1])
    v = op(a.v, b.v)
    wins = a.v > b.v if op is aten.maximum.default else a.v < b.v
    tie = a.v == b.v

    def pick(p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor | None:
        if p is None and q is None:
            return None
        p, q = (0.0 if c is None else c for c in (p, q))
        return torch.where(tie, (p + q) * 0.5, torch.where(wins, p, q))
    return Jet(v, pick(a.t, b.t), pick(a.a, b.a))


@rule(aten.amax.default, aten.amin.default, aten.max.default, aten.min.default)
def _reduced_extremum(op, args, kwargs):
    x = as_jet(args[0])
    if op in (aten.max.default, aten.min.default):
        dims, keepdim = list(range(x.v.dim())), False
    else:
        dims = list(plain(args[1]) if len(args) > 1 else kwargs.get("dim", []))
        keepdim = plain(args[2]) if len(args) > 2 else kwargs.get("keepdim", False)
        dims = [d % max(x.v.dim(), 1) for d in dims] or list(range(x.v.dim()))
    v = op(x.v, *args[1:], **kwargs)
    kept = v
    if not keepdim:
        for d in sorted(dims):
            kept = kept.unsqueeze(d)
    mask = (x.v == kept).to(x.v.dtype)
    count = mask.sum(dims, keepdim=keepdim)
    return Jet(v, _share(mask, x.t, dims, keepdim, count), _share(mask, x.a, dims, keepdim, count))


@rule(aten.max.dim, aten.min.dim)
def _extremum_along(op, args, kwargs):
    x = as_jet(args[0])
    dim = plain(args[1])
    keepdim = plain(args[2]) if len(args) > 2 else kwargs.get("keepdim", False)
    v, idx = op(x.v, dim, keepdim)
    kept = idx if keepdim else idx.unsqueeze(dim)

    def take(c: torch.Tensor | None) -> torch.Tensor | None:
        if c is None:
            return None
        out = c.gather(dim, kept)
        return out if keepdim else out.squeeze(dim)
    return Jet(v, take(x.t), take(x.a)), idx


@rule(aten.topk.default)
def _topk(op, args, kwargs):
    """The k values are the input's at the kernel's indices (a mixture of experts' router)."""
    x = as_jet(args[0])
    v, idx = op(x.v, *_constant_args(args), **kwargs)
    dim = plain(args[2]) if len(args) > 2 else kwargs.get("dim", -1)
    take = (lambda c: None if c is None else c.gather(dim, idx))
    return Jet(v, take(x.t), take(x.a)), idx


# ----------------------------------------------------------------- softmax and losses
def _softmax_jet(x: Jet, dim: int, p: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The jet of ``log softmax(x)`` given ``p = softmax(x)``: ``u = x' - E_p[x']`` and
    ``x'' - E_p[x''] - Var_p(x')``."""
    u = None if x.t is None else x.t - (p * x.t).sum(dim, keepdim=True)
    second = None if x.a is None else x.a - (p * x.a).sum(dim, keepdim=True)
    if u is not None:
        variance = (p * u * u).sum(dim, keepdim=True)
        second = -variance if second is None else second.sub_(variance)
    return u, second


@rule(aten._log_softmax.default)
def _log_softmax(op, args, kwargs):
    x, dim = as_jet(args[0]), args[1]
    v = op(x.v, *args[1:])
    u, second = _softmax_jet(x, dim, v.exp())
    return Jet(v, u, None if second is None else second.expand_as(v))


@rule(aten._softmax.default)
def _softmax(op, args, kwargs):
    """``y = softmax(x)``: ``y' = y u`` and ``y'' = y (u^2 + (log y)'')``."""
    x, dim = as_jet(args[0]), args[1]
    y = op(x.v, *args[1:])
    u, second = _softmax_jet(x, dim, y)
    t = None if u is None else y * u
    a = None
    if second is not None:
        a = y * second if u is None else torch.addcmul(y * second, t, u)
    return Jet(y, t, a)


@rule(aten.nll_loss_forward.default, aten.nll_loss2d_forward.default)
def _nll_loss(op, args, kwargs):
    x, rest = as_jet(args[0]), _constant_args(args)
    out = [None if c is None else op(c, *rest, **kwargs) for c in (x.v, x.t, x.a)]
    return (Jet(out[0][0], out[1][0] if out[1] else None, out[2][0] if out[2] else None),
            out[0][1])


@rule(aten._embedding_bag_forward_only.default, aten._embedding_bag.default)
def _embedding_bag(op, args, kwargs):
    weight, rest = as_jet(args[0]), _constant_args(args)
    mode = rest[3] if len(rest) > 3 else kwargs.get("mode", 0)
    if mode not in (0, 1):  # sum and mean are linear in the weight; max is not
        return generic_rule(op, args, kwargs)
    out = [None if c is None else op(c, *rest, **kwargs) for c in (weight.v, weight.t, weight.a)]
    jet = Jet(out[0][0], out[1][0] if out[1] else None, out[2][0] if out[2] else None)
    return (jet, *out[0][1:])


# -------------------------------------------------------------------- normalisations
# A normalisation's kernel accumulates the statistics of a half-precision input in float32
# and returns the input's dtype; the composed rules do the same (the statistics of a bf16
# jet taken in bf16 would lose the curvature to rounding).
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _wide(x: Any) -> Any:
    """``x`` (a jet or a tensor) in float32 if it is in half precision."""
    if x is None or value(x).dtype not in LOW_PRECISION:
        return x
    return map_jet(lambda c: c.float(), x) if is_jet(x) else x.float()


def _as_input(out: Jet, x: Any) -> Jet:
    """The normalised jet in the input's dtype, as the kernel returns it."""
    dtype = value(x).dtype
    return out if out.v.dtype == dtype else map_jet(lambda c: c.to(dtype), out)


def _affine(xn: Jet, w: Any, b: Any, shape) -> Jet:
    out = xn
    if w is not None:
        out = apply(aten.mul.Tensor, out, apply(aten.view.default, _wide(w), shape))
    if b is not None:
        out = apply(aten.add.Tensor, out, apply(aten.view.default, _wide(b), shape))
    return as_jet(out)


def _normalise(x: Any, dims: list[int], eps: float) -> tuple[Jet, Jet, Jet]:
    """``(x - mean) * rsqrt(var + eps)`` over ``dims`` (biased variance), with mean and rstd,
    in float32 at least."""
    x = _wide(x)
    mean = apply(aten.mean.dim, x, dims, True)
    centred = apply(aten.sub.Tensor, x, mean)
    var = apply(aten.mean.dim, apply(aten.mul.Tensor, centred, centred), dims, True)
    rstd = apply(aten.rsqrt.default, apply(aten.add.Scalar, var, eps))
    return as_jet(apply(aten.mul.Tensor, centred, rstd)), as_jet(mean), as_jet(rstd)


@rule(aten.native_layer_norm.default)
def _layer_norm(op, args, kwargs):
    x, normalized_shape, w, b, eps = args
    dims = list(range(value(x).dim() - len(normalized_shape), value(x).dim()))
    xn, mean, rstd = _normalise(x, dims, eps)
    return _as_input(_affine(xn, w, b, tuple(normalized_shape)), x), mean.v, rstd.v


@rule(aten.native_group_norm.default)
def _group_norm(op, args, kwargs):
    x, w, b, n, c, hw, groups, eps = args
    grouped = apply(aten.view.default, x, [n, groups, -1])
    xn, mean, rstd = _normalise(grouped, [2], eps)
    xn = apply(aten.view.default, xn, list(value(x).shape))
    shape = (1, -1) + (1,) * (value(x).dim() - 2)
    return _as_input(_affine(xn, w, b, shape), x), mean.v.view(n, groups), rstd.v.view(n, groups)


def _batch_norm_running_stats(x, w, b, rm, rv, eps):
    shape = (1, -1) + (1,) * (value(x).dim() - 2)
    invstd = torch.rsqrt(_wide(plain(rv)) + eps).view(shape)
    centred = apply(aten.sub.Tensor, _wide(x), _wide(plain(rm)).view(shape))
    xn = apply(aten.mul.Tensor, centred, invstd)
    empty = value(x).new_empty(0)
    return _as_input(_affine(as_jet(xn), w, b, shape), x), empty, empty


def _batch_norm_batch_stats(x, w, b, eps):
    dims = [0] + list(range(2, value(x).dim()))
    shape = (1, -1) + (1,) * (value(x).dim() - 2)
    xn, mean, invstd = _normalise(x, dims, eps)
    return _as_input(_affine(xn, w, b, shape), x), mean.v.flatten(), invstd.v.flatten()


@rule(aten._native_batch_norm_legit.no_stats)
def _bn_no_stats(op, args, kwargs):
    x, w, b, training, momentum, eps = args
    return _batch_norm_batch_stats(x, w, b, eps)


@rule(aten._native_batch_norm_legit_functional.default)
def _bn_functional(op, args, kwargs):
    x, w, b, rm, rv, training, momentum, eps = args
    if not training:
        return _batch_norm_running_stats(x, w, b, rm, rv, eps) + (plain(rm), plain(rv))
    raise TaylorUnsupported("batch norm that updates its running statistics")


@rule(aten._native_batch_norm_legit_no_training.default)
def _bn_eval(op, args, kwargs):
    x, w, b, rm, rv, momentum, eps = args
    return _batch_norm_running_stats(x, w, b, rm, rv, eps)


@rule(aten.native_batch_norm.default)
def _bn(op, args, kwargs):
    x, w, b, rm, rv, training, momentum, eps = args
    if training:
        if rm is not None or rv is not None:
            raise TaylorUnsupported("batch norm that updates its running statistics")
        return _batch_norm_batch_stats(x, w, b, eps)
    return _batch_norm_running_stats(x, w, b, rm, rv, eps)


# ------------------------------------------------------------------------- pooling
def _window_max(x: Jet, op, args) -> Jet | None:
    """Max pooling over non-overlapping windows as a running selection over the windows'
    strided slices, the first maximum winning as in the kernel (NaN wins): elementwise
    ops that a compiler fuses, where gathering the components by the kernel's indices
    became one slow loop in inductor's CPU code. None for other poolings."""
    kernel = list(plain(args[1]))
    stride = list(plain(args[2])) if len(args) > 2 and plain(args[2]) else kernel
    padding, dilation = (list(plain(args[i])) if len(args) > i else [default]
                         for i, default in ((3, 0), (4, 1)))
    if len(kernel) == 1:
        kernel = kernel * 2
    if len(stride) == 1:
        stride = stride * 2
    ceil = bool(plain(args[5])) if len(args) > 5 else False
    if stride != kernel or any(padding) or any(d != 1 for d in dilation) or ceil:
        return None
    kh, kw = kernel
    ho, wo = x.v.shape[-2] // kh, x.v.shape[-1] // kw

    def window(c: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return c[..., i::kh, j::kw][..., :ho, :wo]
    best = [None if c is None else window(c, 0, 0) for c in (x.v, x.t, x.a)]
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            candidate = window(x.v, i, j)
            take = (candidate > best[0]) | candidate.isnan()
            best = [None if c is None else torch.where(take, window(c, i, j), b)
                    for c, b in zip((x.v, x.t, x.a), best)]
    return Jet(*best)


def _max_pool_for_compiler(op, args, kwargs):
    """Max pooling as a running selection over the windows' slices, which inductor fuses
    (``COMPILER_RULES``); the indices, if anything reads them, are the kernel's."""
    x = as_jet(args[0])
    jet = _window_max(x, op, args) if op is aten.max_pool2d_with_indices.default and not kwargs else None
    if jet is None:
        return _max_pool(op, args, kwargs)
    return jet, op(x.v, *_constant_args(args))[1]


@rule(aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default)
def _max_pool(op, args, kwargs):
    x = as_jet(args[0])
    v = x.v
    if op is aten.max_pool2d_with_indices.default and v.device.type == "cpu" and v.dim() == 4:
        # The CPU kernel is faster on channels-last input (same values and indices).
        v = v.contiguous(memory_format=torch.channels_last)
    v, idx = op(v, *_constant_args(args), **kwargs)
    v, idx = v.contiguous(), idx.contiguous()
    spatial = 2 if op is aten.max_pool2d_with_indices.default else 3

    def gather(c: torch.Tensor | None) -> torch.Tensor | None:
        if c is None:
            return None
        flat = c.flatten(-spatial)
        return flat.gather(-1, idx.flatten(-spatial)).view(idx.shape)
    return Jet(v, gather(x.t), gather(x.a)), idx


# ------------------------------------------------------------------ the generic rule
def generic_rule(op, args, kwargs):
    """Any op with forward-mode derivatives: the jet of ``s -> op(inputs(s))``, with each
    moving input ``x + s x' + s^2/2 x''``, by nested forward-mode AD of that op alone (four
    evaluations of the op). Outputs that are not floating point pass through."""
    leaves, spec = pytree.tree_flatten((args, kwargs), is_leaf=is_jet)
    jets = [i for i, x in enumerate(leaves) if is_jet(x)]

    def along(s: torch.Tensor) -> Any:
        moved = list(leaves)
        for i in jets:
            j = leaves[i]
            x = j.v
            if j.t is not None:
                x = x + s * j.t
            if j.a is not None:
                x = x + (0.5 * s * s) * j.a
            moved[i] = x
        a, k = pytree.tree_unflatten(moved, spec)
        return op(*a, **k)

    dtype = next(leaves[i].v.dtype for i in jets)
    s0, one = torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)
    floating, outputs = _floating_outputs(along, s0)

    def first(s: torch.Tensor) -> Any:
        return torch.func.jvp(lambda u: floating(along(u)), (s,), (one,))[1]

    try:
        with warnings.catch_warnings():  # torch's own, on its first jvp: torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            out_v, out_t = torch.func.jvp(lambda u: floating(along(u)), (s0,), (one,))
            _, out_a = torch.func.jvp(first, (s0,), (one,))
    except Exception as err:  # no forward-mode formula, or not differentiable
        raise TaylorUnsupported(f"no Taylor rule for {op} and no forward-mode derivative "
                                f"({one_line(err, with_type=True)})") from err
    return outputs(out_v, out_t, out_a)


def _floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _floating_outputs(along: Callable[[torch.Tensor], Any], s0: torch.Tensor):
    """Split an op's outputs into the floating ones (differentiated) and the rest (passed
    through): ``select(outputs) -> tuple of floating outputs`` and ``assemble(v, t, a)``."""
    sample = along(s0)
    leaves, spec = pytree.tree_flatten(sample)
    keep = [i for i, x in enumerate(leaves) if _floating(x)]

    def select(out: Any) -> tuple:
        flat = pytree.tree_leaves(out)
        return tuple(flat[i] for i in keep)

    def assemble(v: tuple, t: tuple, a: tuple) -> Any:
        flat = list(leaves)
        for n, i in enumerate(keep):
            flat[i] = Jet(v[n], t[n], a[n])
        return pytree.tree_unflatten(flat, spec)

    return select, assemble


#: The rules for a jet traced for inductor (``genlr.curvature.taylor``): where a form the
#: compiler fuses well differs from the one fastest op by op (max pooling).
COMPILER_RULES: dict[Any, Rule] = {**RULES, aten.max_pool2d_with_indices.default: _max_pool_for_compiler}
