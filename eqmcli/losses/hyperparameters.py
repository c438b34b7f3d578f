"""Loss names, their hyperparameters, defaults (docs/reference.md §1) and validation.

Units: `scale` is the logit scale s (dimensionless), `margin` is in radians for ArcFace,
cosine units for CosFace/AM, a multiplicative angle factor for GA-Softmax and the integer
angle multiplier m for A-Softmax; the combined margin's `m1` multiplies the angle, `m2` adds
to it (radians) and `m3` is subtracted from the cosine; `t1`, `t2` are cosines; `gamma` is
the focal exponent.
`detach_margin` (ArcFace only, optional, default false) is a flag, not a number.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from eqmcli.errors import UserError, shown

Check = Callable[[str, str, float], float]


def _number(loss: str, key: str, value: Any) -> float:
    """`value` as a finite float, or a UserError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"loss {loss!r}: {key} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UserError(f"loss {loss!r}: {key} must be finite, got {value!r}")
    return number


def _positive(loss: str, key: str, value: float) -> float:
    if value <= 0:
        raise UserError(f"loss {loss!r}: {key} must be > 0, got {value!r}")
    return value


def _non_negative(loss: str, key: str, value: float) -> float:
    if value < 0:
        raise UserError(f"loss {loss!r}: {key} must be >= 0, got {value!r}")
    return value


def _interval(low: float, high: float, *, high_open: bool = False, why: str = "") -> Check:
    """A check for low <= value <= high (or < high)."""

    def check(loss: str, key: str, value: float) -> float:
        above = value >= high if high_open else value > high
        if value < low or above:
            bracket = ")" if high_open else "]"
            note = f" ({why})" if why else ""
            raise UserError(
                f"loss {loss!r}: {key} must lie in [{low:g}, {high:g}{bracket}{note}, got {value!r}"
            )
        return value

    return check


def _flag(loss: str, key: str, value: Any) -> bool:
    """`value` as a bool (true/false, or 1/0)."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise UserError(f"loss {loss!r}: {key} must be true or false, got {shown(value)}")


def _at_least_one(loss: str, key: str, value: float) -> float:
    if value < 1:
        raise UserError(
            f"loss {loss!r}: {key} is a multiplicative angular margin and must be >= 1, "
            f"got {value!r}"
        )
    return value


def _integer_multiplier(loss: str, key: str, value: float) -> int:
    if value != int(value) or value < 1:
        raise UserError(
            f"loss {loss!r}: {key} must be an integer >= 1 (A-Softmax m), got {value!r}"
        )
    return int(value)


_COSINE = _interval(-1.0, 1.0, why="a cosine")

# name -> {hyperparameter: (default, check)}
_SPECS: dict[str, dict[str, tuple[float, Check]]] = {
    "softmax": {},
    "normface": {"scale": (30.0, _positive)},
    "sphereface": {
        "margin": (4, _integer_multiplier),
        "lambda_base": (1000.0, _non_negative),
        "lambda_gamma": (0.12, _non_negative),
        "lambda_power": (1.0, _non_negative),
        "lambda_min": (5.0, _non_negative),
    },
    "ga-softmax": {"scale": (30.0, _positive), "margin": (1.5, _at_least_one)},
    "arcface": {
        "scale": (64.0, _positive),
        # The target logit cos(θ+m), with the fallback cos θ − m·sin m where θ + m > π, is
        # non-increasing in θ on [0, π] for every m with cos m + m·sin m >= 1, i.e. up to
        # m ≈ 2.33 rad (at θ = π − m it steps down from −1 to −cos m − m·sin m); checked
        # numerically in tests/losses/test_losses_hyperparameters.py. The bound π/2 is a sane
        # range for an additive angular margin (published ones are 0.3-0.7), not that limit.
        "margin": (0.5, _interval(0.0, math.pi / 2, why="radians")),
    },
    # CosFace (Wang et al., CVPR 2018) and AM-Softmax (Wang et al., 2018): one formula,
    # each name with its paper's defaults
    "cosface": {
        "scale": (64.0, _positive),
        "margin": (0.35, _interval(0.0, 2.0, high_open=True, why="cosine units")),
    },
    "am": {
        "scale": (30.0, _positive),
        "margin": (0.35, _interval(0.0, 2.0, high_open=True, why="cosine units")),
    },
    # InsightFace's margin_list (m1, m2, m3), their default (1.0, 0.5, 0.0) = ArcFace
    "combined": {
        "scale": (64.0, _positive),
        "m1": (1.0, _positive),
        "m2": (0.5, _interval(0.0, math.pi / 2, why="radians")),
        "m3": (0.0, _interval(0.0, 2.0, high_open=True, why="cosine units")),
    },
    "focal": {"scale": (30.0, _positive), "gamma": (2.0, _non_negative)},
    "eqm": {"scale": (64.0, _positive), "t1": (0.5, _COSINE), "t2": (0.1, _COSINE)},
}
# optional flags: absent unless given (so the resolved defaults stay the design table's)
_FLAGS: dict[str, tuple[str, ...]] = {"arcface": ("detach_margin",)}

LOSS_NAMES: tuple[str, ...] = tuple(_SPECS)
"""Every name `build_head` accepts (`am` is CosFace's formula with AM-Softmax's defaults)."""


def canonical_name(name: str) -> str:
    """The registry name for `name` (case-insensitive, `_` read as `-`); UserError if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _SPECS:
        close = difflib.get_close_matches(str(name).lower(), LOSS_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown loss {name!r}{hint} (choose one of {', '.join(LOSS_NAMES)})")
    return key


def resolve_hyperparameters(name: str, **given: Any) -> dict[str, Any]:
    """Fill in the defaults of loss `name` and validate `given`.

    Returns {hyperparameter: value} with every hyperparameter the loss takes. Raises
    `UserError` (a ValueError) naming the loss and the offending hyperparameter.
    """
    loss = canonical_name(name)
    spec = _SPECS[loss]
    flags = _FLAGS.get(loss, ())
    unknown = [key for key in given if key not in spec and key not in flags]
    if unknown:
        takes = ", ".join([*spec, *flags]) if spec else "no hyperparameters"
        raise UserError(
            f"loss {name!r} has no hyperparameter {shown(unknown[0])} (it takes {takes})"
        )
    resolved: dict[str, Any] = {}
    for key, (default, check) in spec.items():
        value = given.get(key, default)
        resolved[key] = check(name, key, _number(name, key, value))
    for key in flags:
        if key in given:
            resolved[key] = _flag(name, key, given[key])
    if loss == "eqm" and resolved["t1"] <= resolved["t2"]:
        raise UserError(
            f"loss {name!r}: t1 ({resolved['t1']:g}) must be greater than t2 "
            f"({resolved['t2']:g}): t1 is the intra-class lower limit, t2 the inter-class upper one"
        )
    return resolved


def cosine_thresholds(name: str, hyperparameters: Mapping[str, Any]) -> dict[str, float]:
    """EqM's thresholds (cosines) among the already validated `hyperparameters` of loss
    `name`: `t1` (the intra-class lower limit, what makes a sample hard) and `t2` (the
    inter-class upper limit), each where given; {} for every other loss."""
    if canonical_name(name) != "eqm":
        return {}
    return {key: float(hyperparameters[key]) for key in ("t1", "t2")
            if hyperparameters.get(key) is not None}
