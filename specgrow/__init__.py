"""specgrow: grow trained Transformers by declarative, machine-checked, function-preserving expansions.

The package imports nothing heavy: `load_spec` needs neither torch nor sympy, and the
training API (`grow_module`, `GrowthSchedule`, `grow_adam_state`) imports torch on first use.
Without the ``torch`` extra that first use raises an ImportError whose message is one line:
``specgrow.grow needs PyTorch (No module named 'torch'): pip install "specgrow[torch]"``.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_spec": "specgrow.spec",
    "grow_module": "specgrow.grow",
    "GrowthSchedule": "specgrow.grow",
    "grow_adam_state": "specgrow.grow",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)  # specgrow.grow: the hint if torch is missing
    raise AttributeError(f"module 'specgrow' has no attribute {name!r}")
