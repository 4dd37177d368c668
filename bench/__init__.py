"""Benchmarks and load tests, run as scripts (python bench/<name>.py)."""
