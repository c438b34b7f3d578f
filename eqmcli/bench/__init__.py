"""Performance measurements behind `eqm bench ...` (timings and peak memory)."""
