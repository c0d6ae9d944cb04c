"""Solvers: exact where an objective's declared properties allow, search where they do not.

- ``separable``: price bisection on concave envelopes (exact for separable
  concave objectives on the grid, within one job's envelope gap otherwise).
- ``maxmin``: bisection on the max-min utility level (exact for monotone utilities).
- ``local``: batched pairwise-transfer local search (any objective).
- ``evolutionary``: Cilantro's evolutionary search, vectorized, fixed evaluation budget.
- ``rounding``: quanta and integrality without losing capacity.
"""
