"""How large a matrix product may be and still run on the calling thread.

OpenBLAS (numpy's BLAS) hands a product of more than 4 x 65536 multiply-adds to
its thread pool. Where the product is one small step of a clip's work, that is a
loss on a small CPU: a replay scores two clips side by side, and the plain member
runs beside the learned one, so the other core is already busy, and the two
products queue for one pool (the transient gate's frame distances: 200 clips in
3.2 s instead of 2.7; the learned member's mel product in 128-row blocks: the
learned + plain bundle 13.5 -> 21 ms a clip, 2026-12-08). Products under this size
run where they are called.
"""

from __future__ import annotations

SERIAL_PRODUCT = 4 * 65536


def serial_rows(per_row: int) -> int:
    """Rows of a product costing ``per_row`` multiply-adds a row that stay under :data:`SERIAL_PRODUCT` (at least 1)."""
    return max(1, SERIAL_PRODUCT // max(1, int(per_row)))
