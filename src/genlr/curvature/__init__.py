"""The curvature engine: the loss and its exact derivatives along an update direction.

``phi(s) = L(theta - s*d)``; the lr methods ask for ``phi'(0)`` and ``phi''(0) = d^T H d``
(``DirectionalDerivatives``: Taylor-mode jet, double backward or forward over reverse, each
checked against another at first use), or a jet of their own (``TaylorPass``, Newt), always
with the model in ``probe_mode`` (no dropout, no BatchNorm statistic written, the RNG
untouched). Modules: ``probe`` (probe mode), ``directional`` (the paths and their checks),
``taylor`` (tracing, compiling and interpreting the jet), ``taylor_rules`` (one Taylor rule
per operator).
"""

from genlr.curvature.directional import (
    PATHS, BoundLoss, DirectionalDerivatives, batch_fraction, dot,
    full_float32, original_module, result_tolerance)
from genlr.curvature.probe import LossFn, has_active_dropout, probe_mode
from genlr.curvature.taylor import TaylorPass, TaylorUnsupported, compile_seconds, compiling_now

__all__ = [
    "PATHS", "BoundLoss", "DirectionalDerivatives", "LossFn", "TaylorPass",
    "TaylorUnsupported", "batch_fraction", "compile_seconds", "compiling_now", "dot",
    "full_float32", "has_active_dropout", "original_module", "probe_mode", "result_tolerance",
]
