"""Every Taylor rule against an independent reference: central differences of the op along
the path ``x + s x' + s^2/2 x''`` in float64. No rule goes untested: the sample table must
cover ``RULES``, and the generic rule (ops without a rule) is checked the same way."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

from genlr.curvature import taylor_rules
from genlr.curvature.taylor_rules import IN_PLACE, RULES, Jet, generic_rule, is_jet

aten = torch.ops.aten
G = torch.Generator().manual_seed(0)


def t(*shape, low=None):
    """A constant float64 tensor (entries of magnitude >= ``low`` if given: off the kinks)."""
    x = torch.randn(*shape, generator=G, dtype=torch.float64)
    if low is not None:
        x = x.sign() * (x.abs() + low)
    return x


def j(*shape, low=None, positive=False):
    """A moving value: random value, first and second derivative."""
    v = t(*shape, low=low)
    if positive:
        v = v.abs() + 0.5
    return Jet(v, t(*shape), t(*shape))


def j32(*shape):
    return Jet(*(t(*shape).float() for _ in range(3)))


def idx(high, *shape):
    return torch.randint(0, high, shape, generator=G)


def mask(*shape):
    return torch.rand(*shape, generator=G) > 0.5


# op -> a function making its arguments (and keyword arguments).
SAMPLES = {
    aten.view.default: lambda: ((j(2, 6), [3, 4]), {}),
    aten._unsafe_view.default: lambda: ((j(2, 6), [12]), {}),
    aten.reshape.default: lambda: ((j(2, 6), [4, 3]), {}),
    aten.expand.default: lambda: ((j(1, 3), [4, 3]), {}),
    aten.permute.default: lambda: ((j(2, 3, 4), [2, 0, 1]), {}),
    aten.transpose.int: lambda: ((j(2, 3, 4), 0, 2), {}),
    aten.t.default: lambda: ((j(2, 3),), {}),
    aten.squeeze.dim: lambda: ((j(2, 1, 3), 1), {}),
    aten.squeeze.dims: lambda: ((j(2, 1, 3, 1), [1, 3]), {}),
    aten.squeeze.default: lambda: ((j(2, 1, 3),), {}),
    aten.unsqueeze.default: lambda: ((j(2, 3), 1), {}),
    aten.clone.default: lambda: ((j(2, 3),), {}),
    aten.slice.Tensor: lambda: ((j(5, 3), 0, 1, 4), {}),
    aten.select.int: lambda: ((j(5, 3), 1, 2), {}),
    aten._to_copy.default: lambda: ((j(2, 3),), {"dtype": torch.float64}),
    aten.alias.default: lambda: ((j(2, 3),), {}),
    aten.lift_fresh_copy.default: lambda: ((j(2, 3),), {}),
    aten.neg.default: lambda: ((j(2, 3),), {}),
    aten.sum.default: lambda: ((j(2, 3),), {}),
    aten.sum.dim_IntList: lambda: ((j(2, 3, 4), [0, 2], True), {}),
    aten.mean.default: lambda: ((j(2, 3),), {}),
    aten.mean.dim: lambda: ((j(2, 3, 4), [1]), {}),
    aten.avg_pool1d.default: lambda: ((j(2, 3, 8), [2]), {}),
    aten.avg_pool2d.default: lambda: ((j(2, 3, 6, 6), [2, 2]), {}),
    aten.avg_pool3d.default: lambda: ((j(1, 2, 4, 4, 4), [2, 2, 2]), {}),
    aten._adaptive_avg_pool2d.default: lambda: ((j(2, 3, 6, 5), [2, 2]), {}),
    aten.flatten.using_ints: lambda: ((j(2, 3, 4), 1), {}),
    aten.index_select.default: lambda: ((j(5, 3), 0, idx(5, 7)), {}),
    aten.repeat.default: lambda: ((j(2, 3), [2, 1]), {}),
    aten.narrow.default: lambda: ((j(5, 3), 0, 1, 2), {}),
    aten.embedding.default: lambda: ((j(10, 4), idx(10, 3, 5)), {}),
    aten.gather.default: lambda: ((j(4, 6), 1, idx(6, 4, 3)), {}),
    aten.index.Tensor: lambda: ((j(5, 3), [idx(5, 4)]), {}),
    aten._unsafe_index.Tensor: lambda: ((j(5, 3), [None, idx(3, 4)]), {}),
    aten.cumsum.default: lambda: ((j(3, 5), 1), {}),
    aten.diagonal.default: lambda: ((j(4, 4),), {}),
    aten.tril.default: lambda: ((j(4, 4),), {}),
    aten.triu.default: lambda: ((j(4, 4), 1), {}),
    aten.roll.default: lambda: ((j(4, 5), [2], [1]), {}),
    aten.flip.default: lambda: ((j(4, 5), [0]), {}),
    aten.mul.Scalar: lambda: ((j(2, 3), 2.5), {}),
    aten.div.Scalar: lambda: ((j(2, 3), 2.5), {}),
    aten.upsample_nearest2d.default: lambda: ((j(1, 2, 3, 3), [6, 6]), {}),
    aten.upsample_bilinear2d.default: lambda: ((j(1, 2, 3, 3), [5, 7], False), {}),
    aten.unbind.int: lambda: ((j(3, 4), 0), {}),
    aten.split.Tensor: lambda: ((j(5, 4), 2), {}),
    aten.split_with_sizes.default: lambda: ((j(5, 4), [2, 3]), {}),
    aten.chunk.default: lambda: ((j(6, 4), 3, 1), {}),
    aten.cat.default: lambda: (([j(2, 3), t(1, 3), j(2, 3)], 0), {}),
    aten.stack.default: lambda: (([j(2, 3), t(2, 3)], 1), {}),
    aten.where.self: lambda: ((mask(3, 4), j(3, 4), t(1, 4)), {}),
    aten.slice_scatter.default: lambda: ((j(5, 3), j(2, 3), 0, 1, 3), {}),
    aten.select_scatter.default: lambda: ((t(5, 3), j(3), 0, 2), {}),
    aten.index_put.default: lambda: ((j(5, 3), [torch.tensor([0, 3])], j(2, 3)), {}),
    aten.scatter.src: lambda: ((j(3, 5), 1, torch.tensor([[0, 1], [2, 3], [4, 0]]), j(3, 2)), {}),
    aten.scatter_add.default: lambda: ((j(3, 5), 1, idx(5, 3, 4), j(3, 4)), {}),
    aten.index_add.default: lambda: ((j(5, 3), 0, idx(5, 4), j(4, 3)), {}),
    aten.copy.default: lambda: ((t(4, 3), j(1, 3)), {}),
    aten.constant_pad_nd.default: lambda: ((j(2, 3), [1, 2], 0.5), {}),
    aten.masked_fill.Scalar: lambda: ((j(3, 4), mask(3, 4), -3.0), {}),
    aten.masked_fill.Tensor: lambda: ((j(3, 4), mask(3, 4), torch.tensor(-2.0, dtype=torch.float64)), {}),
    aten.add.Tensor: lambda: ((t(4, 3), j(3)), {"alpha": 2}),
    aten.sub.Tensor: lambda: ((j(3), j(4, 3)), {}),
    aten.add.Scalar: lambda: ((j(2, 3), 1.5), {}),
    aten.sub.Scalar: lambda: ((j(2, 3), 1.5), {}),
    aten.rsub.Scalar: lambda: ((j(2, 3), 1.5), {}),
    aten.mul.Tensor: lambda: ((j(4, 3), j(3)), {}),
    aten.div.Tensor: lambda: ((j(4, 3), j(3, positive=True)), {}),
    aten.mm.default: lambda: ((j(4, 3), j(3, 5)), {}),
    aten.bmm.default: lambda: ((j(2, 4, 3), j(2, 3, 5)), {}),
    aten.dot.default: lambda: ((j(4), j(4)), {}),
    aten.mv.default: lambda: ((j(4, 3), t(3)), {}),
    aten.addmm.default: lambda: ((j(5), j(4, 3), j(3, 5)), {"beta": 0.5, "alpha": 2.0}),
    aten.baddbmm.default: lambda: ((j(2, 4, 5), t(2, 4, 3), j(2, 3, 5)), {}),
    aten.convolution.default: lambda: ((j(2, 2, 5, 5), j(4, 1, 3, 3), j(4), [1, 1], [1, 1],
                                        [1, 1], False, [0, 0], 2), {}),
    aten.reciprocal.default: lambda: ((j(5, positive=True),), {}),
    aten.relu.default: lambda: ((j(5, low=0.1),), {}),
    aten.leaky_relu.default: lambda: ((j(5, low=0.1), 0.2), {}),
    aten.abs.default: lambda: ((j(5, low=0.1),), {}),
    aten.clamp.default: lambda: ((j(8, low=0.1), -0.5, 0.7), {}),
    aten.hardtanh.default: lambda: ((j(8, low=0.1), -0.5, 0.7), {}),
    aten.tanh.default: lambda: ((j(5),), {}),
    aten.sigmoid.default: lambda: ((j(5),), {}),
    aten.exp.default: lambda: ((j(5),), {}),
    aten.expm1.default: lambda: ((j(5),), {}),
    aten.log.default: lambda: ((j(5, positive=True),), {}),
    aten.log1p.default: lambda: ((j(5, positive=True),), {}),
    aten.rsqrt.default: lambda: ((j(5, positive=True),), {}),
    aten.sqrt.default: lambda: ((j(5, positive=True),), {}),
    aten.sin.default: lambda: ((j(5),), {}),
    aten.cos.default: lambda: ((j(5),), {}),
    aten.erf.default: lambda: ((j(5),), {}),
    aten.pow.Tensor_Scalar: lambda: ((j(5, positive=True), 1.5), {}),
    aten.pow.Tensor_Tensor: lambda: ((j(5, positive=True), j(5)), {}),
    aten.pow.Scalar: lambda: ((1.7, j(5)), {}),
    aten.gelu.default: lambda: ((j(6),), {"approximate": "tanh"}),
    aten.silu.default: lambda: ((j(6),), {}),
    aten.softplus.default: lambda: ((j(6), 2.0, 1.0), {}),
    aten.elu.default: lambda: ((j(6, low=0.1), 1.3, 1.1, 0.9), {}),
    aten._log_softmax.default: lambda: ((j(3, 5), 1, False), {}),
    aten._softmax.default: lambda: ((j(3, 5), 1, False), {}),
    aten.nll_loss_forward.default: lambda: ((j(4, 5), idx(5, 4), t(5).abs(), 1, -100), {}),
    aten.nll_loss2d_forward.default: lambda: ((j(2, 5, 3, 3), idx(5, 2, 3, 3), None, 1, 2), {}),
    aten._embedding_bag_forward_only.default: lambda: (
        (j(10, 4), idx(10, 9), torch.tensor([0, 2, 5]), False, 1), {}),
    aten._embedding_bag.default: lambda: ((j(10, 4), idx(10, 9), torch.tensor([0, 2, 5])), {}),
    aten.native_layer_norm.default: lambda: ((j(3, 4, 6), [6], j(6), j(6), 1e-5), {}),
    aten.native_group_norm.default: lambda: ((j(2, 6, 3, 3), j(6), j(6), 2, 6, 9, 3, 1e-5), {}),
    aten._native_batch_norm_legit.no_stats: lambda: ((j(5, 3, 2, 2), j(3), j(3), True, 0.1, 1e-5), {}),
    aten._native_batch_norm_legit_functional.default: lambda: (
        (j(5, 3), j(3), j(3), t(3), t(3).abs() + 0.5, False, 0.1, 1e-5), {}),
    aten._native_batch_norm_legit_no_training.default: lambda: (
        (j(5, 3), j(3), j(3), t(3), t(3).abs() + 0.5, 0.1, 1e-5), {}),
    aten.native_batch_norm.default: lambda: ((j(5, 3), j(3), j(3), None, None, True, 0.1, 1e-5), {}),
    aten.maximum.default: lambda: ((j(3, 5), j(3, 5)), {}),
    aten.minimum.default: lambda: ((t(1, 5), j(3, 5)), {}),
    aten.amax.default: lambda: ((j(3, 5), [1]), {}),
    aten.amin.default: lambda: ((j(3, 4, 5), [0, 2], True), {}),
    aten.max.default: lambda: ((j(3, 5),), {}),
    aten.min.default: lambda: ((j(3, 5),), {}),
    aten.max.dim: lambda: ((j(3, 5), 1), {}),
    aten.topk.default: lambda: ((j(3, 6), 2, 1), {}),
    aten.min.dim: lambda: ((j(3, 5), 0, True), {}),
    aten.max_pool2d_with_indices.default: lambda: ((j(2, 2, 4, 4), [2, 2]), {}),
    aten.max_pool3d_with_indices.default: lambda: ((j(1, 2, 4, 4, 4), [2, 2, 2]), {}),
}
# Ops with no float64 kernel, in float32. A bilinear op's value along the path is a quartic
# in s, for which five-point central differences with h = 1 are exact (up to rounding).
FLOAT32_BILINEAR = {
    aten._grouped_mm.default: lambda: ((j32(10, 8), j32(3, 8, 8), torch.tensor([3, 7, 10], dtype=torch.int32)), {}),
}
# Ops without a rule, through the generic rule (nested forward-mode AD of the op).
GENERIC = {
    aten.logsumexp.default: lambda: ((j(3, 5), [1]), {}),
    aten.var.correction: lambda: ((j(3, 5), [1]), {"correction": 1}),
    aten.linalg_vector_norm.default: lambda: ((j(3, 5), 2, [1]), {}),
    aten.atan.default: lambda: ((j(5),), {}),
}


def along(op, args, kwargs, s: float):
    """``op`` at ``x + s x' + s^2/2 x''`` for every moving input."""
    def place(x):
        if not is_jet(x):
            return x
        out = x.v
        if x.t is not None:
            out = out + s * x.t
        if x.a is not None:
            out = out + 0.5 * s * s * x.a
        return out
    return pytree.tree_map(place, (args, kwargs), is_leaf=is_jet)


def central_differences(op, args, kwargs, h=1e-4, points=3):
    """Value, first and second derivative along the path, of the first floating output
    (``points=5``: the five-point stencils, exact for polynomials of degree 4)."""
    def at(s):
        a, k = along(op, args, kwargs, s)
        out = op(*a, **k)
        leaves = [x for x in pytree.tree_leaves(out) if x.is_floating_point()]
        return leaves[0].double()
    f0, fp, fm = at(0.0), at(h), at(-h)
    if points == 5:
        fpp, fmm = at(2 * h), at(-2 * h)
        return (f0, (fmm - 8 * fm + 8 * fp - fpp) / (12 * h),
                (-fmm + 16 * fm - 30 * f0 + 16 * fp - fpp) / (12 * h * h))
    return f0, (fp - fm) / (2 * h), (fp - 2 * f0 + fm) / (h * h)


def first_jet(out):
    return next(x for x in pytree.tree_leaves(out, is_leaf=is_jet) if is_jet(x))


def assert_jet_matches(op, got: Jet, args, kwargs, h=1e-4, tolerance=1e-5, points=3):
    v, t_, a = central_differences(op, args, kwargs, h, points)
    for name, mine, ref in (("value", got.v, v), ("first", got.t, t_), ("second", got.a, a)):
        mine = torch.zeros_like(ref) if mine is None else mine.double().expand_as(ref)
        torch.testing.assert_close(mine, ref, rtol=tolerance, atol=tolerance, msg=f"{op} {name}")


def test_every_rule_has_a_sample():
    assert set(RULES) == set(SAMPLES) | set(FLOAT32_BILINEAR), (set(RULES) ^ set(SAMPLES))


@pytest.mark.parametrize("op", list(SAMPLES), ids=str)
def test_rule_matches_central_differences(op):
    args, kwargs = SAMPLES[op]()
    got = first_jet(RULES[op](op, args, kwargs))
    assert_jet_matches(op, got, args, kwargs)


@pytest.mark.parametrize("op", list(FLOAT32_BILINEAR), ids=str)
def test_float32_bilinear_rule_matches_exact_differences(op):
    args, kwargs = FLOAT32_BILINEAR[op]()
    got = first_jet(RULES[op](op, args, kwargs))
    assert_jet_matches(op, got, args, kwargs, h=1.0, tolerance=1e-4, points=5)


@pytest.mark.slow  # compiles for a minute on a 2-core CPU
def test_every_rule_compiled_in_one_graph():
    """Every sample's jet (the rules and the generic rule) traced with make_fx into one ATen
    graph of the three streams and compiled by inductor, as the Taylor pass compiles a
    loss's jet, against the same central differences."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from genlr.curvature.taylor import _compile

    cases = []  # (op, args, kwargs, rule)
    for op, make in SAMPLES.items():
        cases.append((op, *make(), RULES[op]))
    for op, make in GENERIC.items():
        cases.append((op, *make(), generic_rule))
    inputs, layouts = [], []
    for op, args, kwargs, rule in cases:  # each jet as three inputs, each tensor as one
        leaves, spec = pytree.tree_flatten((args, kwargs), is_leaf=is_jet)
        slots = []
        for leaf in leaves:
            if is_jet(leaf):
                slots.append(("jet", len(inputs)))
                inputs.extend([leaf.v, leaf.t, leaf.a])
            elif isinstance(leaf, torch.Tensor):
                slots.append(("tensor", len(inputs)))
                inputs.append(leaf)
            else:
                slots.append(("constant", leaf))
        layouts.append((spec, slots))

    def all_jets(*flat):
        out = []
        for (op, _, _, rule), (spec, slots) in zip(cases, layouts):
            leaves = [Jet(*flat[i:i + 3]) if kind == "jet" else flat[i] if kind == "tensor" else i
                      for kind, i in slots]
            args, kwargs = pytree.tree_unflatten(leaves, spec)
            jet = first_jet(rule(op, args, kwargs))
            out += [jet.v, torch.zeros_like(jet.v) if jet.t is None else jet.t.expand_as(jet.v),
                    torch.zeros_like(jet.v) if jet.a is None else jet.a.expand_as(jet.v)]
        return out

    with torch.no_grad():
        graph = make_fx(all_jets)(*inputs)
        results = _compile(graph, inputs)(*inputs)
    for k, (op, args, kwargs, _) in enumerate(cases):
        assert_jet_matches(op, Jet(*results[3 * k:3 * k + 3]), args, kwargs)


@pytest.mark.parametrize("op", list(GENERIC), ids=str)
def test_generic_rule_matches_central_differences(op):
    args, kwargs = GENERIC[op]()
    got = first_jet(generic_rule(op, args, kwargs))
    assert_jet_matches(op, got, args, kwargs)


def test_relu_in_place_gives_the_same_jet():
    x = j(6, low=0.1)
    fresh = RULES[aten.relu.default](aten.relu.default, (x,), {})
    donated = IN_PLACE[aten.relu.default](
        aten.relu.default, (Jet(x.v.clone(), x.t.clone(), x.a.clone()),), {})
    for field in "vta":
        torch.testing.assert_close(getattr(donated, field), getattr(fresh, field))


@pytest.mark.parametrize("op,make", [
    (aten.maximum.default, lambda x: (x, x.flip(1))),
    (aten.amax.default, lambda x: (x, [1])),
    (aten.max.default, lambda x: (x,)),
])
def test_ties_share_the_derivative_as_autograd_does(op, make):
    """At a tie the extremum is not differentiable; the rules take autograd's convention
    (an even share), so the Taylor pass and double backward agree there too."""
    v = torch.tensor([[1.0, 3.0, 3.0, 1.0]], dtype=torch.float64)
    tangent, curvature = t(1, 4), t(1, 4)
    parts = zip(*(make(c) for c in (v, tangent, curvature)))
    args = tuple(Jet(*p) if isinstance(p[0], torch.Tensor) else p[0] for p in parts)
    got = first_jet(RULES[op](op, args, {}))
    x = v.clone().requires_grad_(True)
    first = torch.autograd.grad(op(*make(x)).sum(), x)[0]
    torch.testing.assert_close(got.t.sum(), (first * tangent).sum())
    torch.testing.assert_close(got.a.sum(), (first * curvature).sum())


@pytest.mark.parametrize("shape,kernel", [((2, 3, 6, 6), [2, 2]), ((2, 3, 7, 5), [3, 2]), ((1, 2, 4, 4), [2])])
def test_max_pool_traced_for_the_compiler_is_the_same_jet(shape, kernel):
    """The form the compiler gets (a running selection over the windows' slices) gives the
    kernel's values, indices and the same jet, ties and all."""
    op = aten.max_pool2d_with_indices.default
    x = j(*shape)
    x.v[0, 0, 0, :2] = 1.0  # a tie in the first window: the first maximum wins
    x.v[0, 0, 1, :2] = 1.0
    plain_jet, plain_idx = RULES[op](op, (x, kernel), {})
    traced_jet, traced_idx = taylor_rules.COMPILER_RULES[op](op, (x, kernel), {})
    assert torch.equal(plain_idx, traced_idx)
    for field in "vta":
        assert torch.equal(getattr(plain_jet, field), getattr(traced_jet, field)), field
