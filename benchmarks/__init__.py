"""Measured runs (BENCHMARKS.md): each module is a script and importable for smoke tests."""
