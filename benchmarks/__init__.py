"""Benchmarks, each a module run from the repository root as ``python -m benchmarks.<name>`` over the shared harness
(:mod:`benchmarks.harness`); ``benchmarks/README.md`` has the headline figures and the commands."""
