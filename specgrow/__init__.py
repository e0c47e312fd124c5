"""specgrow: grow trained Transformers by declarative, machine-checked, function-preserving expansions."""

__version__ = "0.1.0"
