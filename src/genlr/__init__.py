"""genlr: learning rates from second-order information along the update direction."""

from genlr.methods import METHODS, LRMethod, build_lr_method
from genlr.methods.gen_exact import ExactGeN
from genlr.methods.gen_parabola import ParabolaGeN
from genlr.methods.newt import Newt

__all__ = ["ExactGeN", "ParabolaGeN", "Newt", "LRMethod", "METHODS", "build_lr_method"]
