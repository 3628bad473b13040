"""Benchmarks: run on purpose (``python -m benchmarks.<name>``), they print figures."""
