"""Python's cyclic garbage collector held off while a conversion plans and writes.

A checkpoint of 100,000 tensors makes about a million small objects (entries,
ops, header and manifest records) that never form cycles; each automatic full
collection walks all of them again, which took 1.5 s of a 5 s conversion.
Reference counting still frees everything as usual; only the cycle detector
waits, and runs on its usual schedule again afterwards.
"""

from __future__ import annotations

import functools
import gc


def paused(fn):
    """Run ``fn`` with automatic collection off; the previous setting is restored after."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return run
