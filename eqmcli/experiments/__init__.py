"""Many runs: `eqm sweep` and `eqm compare`.

- `grid`: a recipe's sweep grid expanded into member recipes and folder names.
- `sweep`: running the members (`sweep.json`), resumable; `launchers`: local process pool
  (`process_pool`) or Slurm through submitit; `status`: `eqm sweep status`.
- `results`: what one finished run measured (verification and analysis numbers).
- `compare`: groups of runs compared with Welch's t-test and McNemar's test.
"""
