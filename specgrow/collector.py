"""Python's cyclic garbage collector paused around work that leaves no cyclic garbage behind.

Importing SymPy (or torch) builds hundreds of thousands of objects that live as long as the
process, and a proof builds the IR and expression trees it keeps until its end; neither
leaves cycles to collect (importing SymPy leaves 42 unreachable objects). The collector
would only scan them again and again: about a seventh of a cold ``specgrow check``.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def paused(freeze: bool = False):
    """The collector off for the block, and as it was before after it.

    With ``freeze``, what exists at the end of the block is moved out of the collector's sight
    for good (`gc.freeze`): for an import, whose objects live as long as the process.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()
