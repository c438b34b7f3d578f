"""How far apart C class centres can be in d dimensions: the smallest achievable largest
pairwise cosine of C unit vectors in R^d, where it is known (a spherical-code bound).

EqM (docs/reference.md §1) asks every feature to keep cos θ_j ≤ t2 to the other class centres. A
feature sitting at its own centre sees the other centres at the centres' pairwise
cosines, and some pair of C centres always has a cosine of at least this bound, so a t2
below it cannot be met by features near their centres (`infeasible_t2_message`).

Everything here is in cosine units; degrees appear only in messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineBound:
    """`cosine`: the smallest largest pairwise cosine; `source`: where that value comes from."""

    cosine: float
    source: str

    @property
    def degrees(self) -> float:
        """The same bound as the largest achievable smallest pairwise angle, in degrees."""
        return math.degrees(math.acos(max(-1.0, min(1.0, self.cosine))))


#: The Tammes problem on the sphere S^2 (d = 3): the largest achievable smallest angle
#: between N points, in degrees, for the N whose optimum is proven.
#: N = 7, 8, 9: K. Schütte and B. L. van der Waerden, Math. Ann. 123 (1951);
#: N = 10, 11: L. Danzer, Discrete Math. 60 (1986) (11 also K. Böröczky, 1983);
#: N = 12 (the icosahedron, arccos(1/√5)): L. Fejes Tóth (1943);
#: N = 13: O. R. Musin and A. S. Tarasov, Discrete Comput. Geom. 48 (2012);
#: N = 14: O. R. Musin and A. S. Tarasov, Experimental Math. 24 (2015);
#: N = 24 (the snub cube): R. M. Robinson, Math. Ann. 144 (1961).
#: N ≤ 6 are the simplex and Rankin cases below.
TAMMES_DEGREES: dict[int, float] = {
    7: 77.8695,
    8: 74.8585,
    9: 70.5288,
    10: 66.1468,
    11: 63.4349,
    12: 63.4349,
    13: 57.1367,
    14: 55.6706,
    24: 43.6908,
}


def smallest_largest_cosine(count: int, dim: int) -> CosineBound | None:
    """The smallest value the largest pairwise cosine of `count` unit vectors in `dim`
    dimensions can take (cosine units), with its source; None where it is not known.

    count ≤ dim + 1: −1/(count − 1), the regular simplex; dim + 1 < count ≤ 2·dim: 0,
    Rankin's bound (met by the cross-polytope); dim = 2: cos(2π/count), the regular
    polygon; dim = 3: the proven optima of the Tammes problem (`TAMMES_DEGREES`).
    """
    if count < 2 or dim < 1:
        raise ValueError(f"need at least 2 vectors in at least 1 dimension, not {count} in {dim}")
    if count <= dim + 1:
        return CosineBound(-1.0 / (count - 1), "regular simplex")
    if count <= 2 * dim:
        return CosineBound(0.0, "Rankin (C ≤ 2d)")
    if dim == 1:  # three or more of ±1: two coincide
        return CosineBound(1.0, "pigeonhole (d = 1)")
    if dim == 2:
        return CosineBound(math.cos(2 * math.pi / count), "regular polygon")
    if dim == 3 and count in TAMMES_DEGREES:
        degrees = TAMMES_DEGREES[count]
        return CosineBound(math.cos(math.radians(degrees)), f"Tammes problem, N = {count}")
    return None


def infeasible_t2_message(t2: float, num_classes: int, dim: int) -> str | None:
    """A one-line warning when EqM's inter-class limit `t2` (a cosine) is below what
    `num_classes` centres in `dim` dimensions allow (None when it is not, or not known)."""
    bound = smallest_largest_cosine(num_classes, dim)
    if bound is None or t2 >= bound.cosine:
        return None
    below, above = _rounded(bound.cosine, up=False), _rounded(bound.cosine, up=True)
    return (
        f"warning: loss.t2 = {t2:g} is below what {num_classes} class centres in {dim} "
        f"dimensions allow: some pair always has cosine ≥ {below} ({bound.degrees:.1f}°; "
        f"{bound.source}), so EqM's inter-class term never switches off for features near "
        f"their centres; choose t2 ≥ {above}, fewer classes or a larger "
        "model.embedding_dim"
    )


def _rounded(cosine: float, *, up: bool) -> str:
    """`cosine` to 4 decimals, rounded down (a true "≥") or up (a t2 that meets it), past
    float noise such as cos(π/3) = 0.5000000000000001; trailing zeros dropped."""
    scaled = round(cosine * 10_000, 6)
    value = (math.ceil(scaled) if up else math.floor(scaled)) / 10_000
    return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"
