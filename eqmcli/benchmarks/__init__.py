"""Micro-benchmarks behind `eqm bench ...` (each module exposes one core function)."""
