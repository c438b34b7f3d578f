"""The run core: what a run is and where its files live.

- `eqmcli.run.recipe`: YAML -> validated pydantic recipe, ``--set`` overrides, bounded reader.
- `eqmcli.run.rundir`: the run directory (`RunPaths`, marker, lock), the one reader of
  ``metrics.jsonl`` and of analysis summaries, and `load_trained`.
- `eqmcli.run.checkpoint`: checkpoint files (atomic writes, ``weights_only`` reads).
"""
