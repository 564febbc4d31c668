"""Guests bundled for the demo, the tests and the benchmarks."""
