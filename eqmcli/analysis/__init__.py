"""The imbalance study behind `eqm analyze` (the paper's Figs. 5-6).

- `statistics`: the pure core on arrays: per-class intra-class scope, inter-class margin and
  accuracy (`per_class_statistics`), size bins and group summaries. Angles in degrees.
- `nearest`: the exact nearest-centre search over C classes (blocked, never C x C).
- `study`: a trained run in, ``RUN/analysis/`` out (`analyze_run`, `analyze_trained`).
"""
