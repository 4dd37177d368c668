"""The hub's use cases: validate, authorize, run against the store.

Services know nothing of gRPC; the server calls them with an authenticated
``Principal`` and domain values, and maps their errors to statuses.
"""
