"""What a run leaves behind and how it is read back: TensorBoard events (``RunWriter``),
``summary.json`` (``build_summary``, ``write_summary``, ``RunStats``), PNG plots
(``write_plots``), and ``read_scalars`` / ``find_runs`` for reports. See docs/design.md,
"What a run leaves behind".

Names load with their module on first use (PEP 562): ``RunStats`` needs neither
TensorBoard nor matplotlib, so checking a config before a run does not import them."""

import importlib

_MODULES = {
    "events": ("read_history", "read_scalars", "find_runs"),
    "plots": ("History", "write_plots"),
    "summary": ("REQUIRED_KEYS", "REQUIRED_SUBKEYS", "STATUSES", "RunStats", "build_summary",
                "missing_keys", "read_summary", "write_summary"),
    "tensorboard": ("DEFAULT_HPARAM_METRICS", "RunWriter", "flatten_hparams"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genlr.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
