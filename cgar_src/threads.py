"""Torch's intra-op thread count for one block of code, restored afterwards (the package's one place for it).

Small reduced problems (the fixed-point solves of ``cgar_src.analysis.gate_fit`` and of the theory chapters) run
faster with one thread than with several on shared cores, and CPU kernels split their sums by thread, so a bfloat16
result depends on the count (``cgar_src.book.bundle.verify_bundle`` recomputes with the count a bundle was written
with). Setting the count for a whole process, as ``torch.set_num_threads`` does, leaks into whatever runs next (a
notebook kernel, the next test); :func:`torch_threads` sets it for a ``with`` block only. A leaf of the package's
layering (beside ``records`` and ``_validate``): it imports nothing from cgar_src, so every layer may use it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the ``with`` block with ``n`` intra-op threads (``torch.set_num_threads(n)``) and restore the count found
    on entry when it exits, also when the block raises. ``n`` is checked on entry, before anything changes: a
    ``ValueError`` naming ``n`` unless it is an integer >= 1 (the block does not run).

    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:   # the message of _validate.positive_int
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
