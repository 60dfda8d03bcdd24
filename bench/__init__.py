"""Benchmarks; each writes figures recorded in docs/benchmarks.md."""
