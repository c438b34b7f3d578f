"""`python -m eqmcli ...` (what `torchrun -m eqmcli train ...` runs)."""

from eqmcli.cli import main

if __name__ == "__main__":
    main()
