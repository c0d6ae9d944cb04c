"""Online performance models with confidence bounds, and load forecasters (pure)."""

from learners.base import Learner, as_alloc_matrix

__all__ = ["Learner", "as_alloc_matrix"]
