"""cluster-mgr: a performance-aware resource manager for Ray clusters.

Importing this package imports neither Ray nor gRPC (learners/ and allocators/
depend on the data model in ``cluster_mgr.model``).
"""

__version__ = "0.1.0"
