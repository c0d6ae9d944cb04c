"""A plug-in objective in a few lines: utility with a tail penalty below 0.5 (the docs' worked example)."""

from __future__ import annotations

import numpy as np

from allocators.objectives import objective


@objective("tail_aware", monotone=True, concave=True, separable=True)
def tail_aware(u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """Utility, with shortfalls below 0.5 counted three times (concave, monotone)."""
    return u - 2.0 * np.clip(0.5 - u, 0.0, None)
