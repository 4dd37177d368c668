"""Federation between hubs (issue 15): peers, the trust between them, channels to them, one catalog.

This package is the core's part of it (models, the division tree, channels and trust material); the
services and the gRPC handlers that use it live in ``exchange.services.federation`` and ``exchange.server``.
"""
