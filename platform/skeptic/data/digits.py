"""scikit-learn's 8x8 handwritten digits: ships inside the package, so it works offline."""

from __future__ import annotations

import numpy as np

DIGIT_NAMES: list[str] = [str(d) for d in range(10)]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images float32 N x 1 x 8 x 8 in [0, 1], labels int64."""
    # imported here: scikit-learn takes a second to import, and every spec check loads
    # skeptic.data whatever the dataset
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap).
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)
