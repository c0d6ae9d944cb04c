"""The admin API: a token-authenticated gRPC service the CLI uses on a running manager.

``server`` serves a ControlPlane; ``client`` calls it. Nothing here imports Ray,
so ``cluster-mgr status`` answers without starting a Ray driver. This package's
``__init__`` imports nothing, so importing it does not even import gRPC.
"""
