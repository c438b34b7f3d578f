"""The figures of `eqm plot`: `figures` (Figs. 5-6, training curves, ROC, the feature
sphere) and `sweeps` (one metric across a sweep's grid)."""
