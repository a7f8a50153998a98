"""Benchmarks of hepattr_jax (importable so tests can call their ``main``)."""
