"""Runtime wiring of the backends (Ray here; the sim backend lives beside it).

Importing this package imports no Ray: ``cluster_mgr.runtime.ray_backend`` does.
"""
