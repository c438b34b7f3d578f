"""Seeded torch generators for the run's random streams (sample order, flips, Partial FC).

Each stream's seed is derived from the recipe seed by integer arithmetic (e.g. `seed *
1_000_003 + step`). torch seeds are unsigned 64-bit integers, so a derived value is reduced
modulo 2**64: every value torch accepted before stays the same (resumes and reruns keep
their draws), and no recipe seed (up to 2**32 - 1) can overflow `manual_seed`.
"""

from __future__ import annotations

import torch

SEED_MODULUS = 2**64
"""torch.Generator.manual_seed takes seeds in [0, 2**64)."""


def generator_seed(value: int) -> int:
    """`value` as a torch seed: itself when below 2**64, else reduced modulo 2**64."""
    return int(value) % SEED_MODULUS


def seeded_generator(value: int, device: torch.device | str | None = None) -> torch.Generator:
    """A torch generator (on `device`, default the CPU) seeded with `generator_seed(value)`."""
    generator = torch.Generator() if device is None else torch.Generator(device=device)
    return generator.manual_seed(generator_seed(value))
