"""genlr: learning rates from second-order information along the update direction."""

import importlib

# Loaded on first use (PEP 562), so that ``import genlr.<light module>`` does not import
# torch: gen-train checks a command line and prints --help without it.
_EXPORTS = {
    "ExactGeN": "genlr.methods.gen_exact",
    "ParabolaGeN": "genlr.methods.gen_parabola",
    "Newt": "genlr.methods.newt",
    "LRMethod": "genlr.methods",
    "METHODS": "genlr.methods",
    "build_lr_method": "genlr.methods",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genlr' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
