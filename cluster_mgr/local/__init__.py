"""Fast per-node control: one LocalController per node acting every fast window (100 ms).

The global allocator sets per-node budgets each round; the controllers here act
inside them through the fast path only (quota, frequency, concurrency, rate
limit, PIM cores). Everything is plain numpy over (nodes, services) so the same
class steps one node under Ray and thousands of nodes in the sim backend.
"""

from cluster_mgr.local.knobs import FastAction, Knobs, NodeBudget
from cluster_mgr.local.signals import NodeSignals

__all__ = ["FastAction", "Knobs", "NodeBudget", "NodeSignals"]
