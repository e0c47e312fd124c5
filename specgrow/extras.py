"""The optional ``torch`` extra: PyTorch and safetensors, for ``apply`` and the training API.

``pip install specgrow`` gives the checker (``validate``, ``check``, ``prove``, ``plan``), which
never imports either; ``pip install "specgrow[torch]"`` adds ``specgrow apply`` and
`specgrow.grow_module`, `specgrow.GrowthSchedule` and `specgrow.grow_adam_state`. What needs
the extra and cannot import it says so in one line:

>>> print(needs_torch("apply", "No module named 'torch'"))
apply needs PyTorch (No module named 'torch'): pip install "specgrow[torch]"
"""

from __future__ import annotations

import importlib
import importlib.util

HINT = 'pip install "specgrow[torch]"'
MODULES = ("torch", "safetensors")  # what the extra installs and specgrow imports


def needs_torch(what: str, reason: str) -> str:
    """The one-line message: ``what`` needs the extra, why it is missing, how to install it."""
    return f"{what} needs PyTorch ({' '.join(reason.split())}): {HINT}"


def not_found() -> str | None:
    """Why the extra is missing, if one of its modules cannot be found; None if all can be.

    Cheap: nothing is imported (a module that is found but fails to import shows in
    `unimportable`)."""
    for name in MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"No module named {name!r}"
    return None


def unimportable() -> str | None:
    """Why the extra cannot be imported, or None if all its modules import (it imports them)."""
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            return str(err) or f"cannot import {name}"
    return None
