"""Synthetic face-like identities, rendered on the fly with vectorized torch ops.

Every identity is a deterministic face-like pattern drawn from `(seed, identity id)`:
an oval face with a skin tone and a skin texture (two oriented sinusoids), a hair colour
and hair style (volume, length, hairline height, curve and parting), eyes (spacing,
height, size, iris colour), eyebrows (gap, length, thickness, slope), a nose, a mouth
(height, width, thickness, curvature, lip colour), an optional beard and up to three
identity-specific skin marks. Every *sample* is that identity seen under nuisance
variation drawn from `(seed, identity id, sample index)`:

- geometry: shift (up to ±6 % of the image), scale (±7 %), in-plane rotation (±8°),
  a yaw-like sideways shift of the inner features;
- expression: eye openness (down to nearly closed), gaze, brow raise, smile/frown, open mouth,
  jitter of every part position, hairline jitter;
- scene: a background gradient between two random colours plus a random blob, random
  clothing colour, a random occluder (25 % of samples) in front of the face;
- camera: brightness, contrast, per-channel colour cast, a directional illumination
  gradient (±60 % across the image), Gaussian blur (sigma up to 1 px at 48 px) and
  Gaussian noise (sigma up to 11 grey levels).

All the ranges above are for `difficulty = 1`; they scale linearly with it (`0` renders
the clean identity). Geometry is applied to the coordinate grid, so every size renders
the same picture (shapes are soft-edged analytic regions, blur widens their edges
exactly as a Gaussian blur would, to first order). Randomness comes from a counter-based
hash (splitmix64) of the keys, so a sample is the same image whatever batch, process or
worker renders it, and datasets carry no mutable state.

Class sizes (`class_sizes`):

- `casia-like`: class k of C (k = 0..C-1) gets the q_k = k/(C-1) quantile of a
  truncated Pareto (Zipf-like, density ∝ n^-2) law on [min_images, max_images]:
  ``n_k = round(min_images / (1 - q_k (1 - min_images / max_images)))``; the sizes are
  then shuffled over class ids with the seed. Defaults (C = 200, min 10, max 400):
  7,740 images; quantiles 10/25/50/75/90/99 % = 11/13/19.5/37/81/287 images; mean 38.7;
  89.5 % of the classes have fewer than 80 images; the largest has 400.
- `uniform`: every class has exactly `max_images` images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from eqmcli.errors import UserError

#: Identity ids of the held-out verification identities start here (training ids are
#: 0..num_classes-1), so the two sets can never overlap.
VERIFICATION_ID_OFFSET = 1 << 40
#: Sample indices of the closed-set test split start here (training samples of a class
#: are 0..n-1), so test images are never training images.
TEST_SAMPLE_OFFSET = 1 << 30

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_STREAM_IDENTITY = 0x1D
_STREAM_SAMPLE = 0x5A
_STREAM_SIZES = 0xC5
_STREAM_PAIRS = 0x9A
_STREAM_NOISE = 0x7E
_CHUNK = 32  # images rendered per vectorized pass (keeps the fields in cache)


# ----------------------------------------------------------------------- hashing
def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _keys(*parts: Any) -> np.ndarray:
    """Hash a tuple of integers / integer arrays (broadcast together) into uint64 keys."""
    arrays = np.broadcast_arrays(*[np.asarray(p, dtype=np.int64) for p in parts])
    key = np.zeros(arrays[0].shape, dtype=np.uint64)
    for part in arrays:
        key = _splitmix64(key ^ part.astype(np.uint64))
    return key


def _uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """`count` independent U[0, 1) float64 numbers per key: shape `keys.shape + (count,)`."""
    with np.errstate(over="ignore"):
        counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
        bits = _splitmix64(keys[..., None] ^ counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _Draw:
    """Hands out the columns of a `(N, count)` uniform matrix one parameter at a time."""

    def __init__(self, u: np.ndarray) -> None:
        self._u = u
        self._next = 0

    def __call__(self, low: float = 0.0, high: float = 1.0, n: int | None = None) -> np.ndarray:
        width = 1 if n is None else n
        cols = self._u[:, self._next : self._next + width]
        if cols.shape[1] != width:
            raise RuntimeError("ran out of uniforms: raise the count in the caller")
        self._next += width
        out = low + (high - low) * cols
        return out[:, 0] if n is None else out


# ------------------------------------------------------------------- parameters
_SKIN_LIGHT = np.array([0.96, 0.80, 0.68])
_SKIN_DARK = np.array([0.30, 0.19, 0.12])
_HAIR = np.array(
    [
        [0.07, 0.06, 0.06],  # black
        [0.24, 0.14, 0.08],  # dark brown
        [0.46, 0.31, 0.18],  # brown
        [0.86, 0.73, 0.46],  # blond
        [0.62, 0.26, 0.12],  # red
        [0.60, 0.60, 0.60],  # grey
        [0.90, 0.89, 0.86],  # white
    ]
)
_IRIS = np.array(
    [
        [0.33, 0.19, 0.09],  # brown
        [0.10, 0.07, 0.05],  # dark
        [0.28, 0.44, 0.70],  # blue
        [0.32, 0.48, 0.28],  # green
        [0.48, 0.52, 0.58],  # grey
    ]
)
_LIP = np.array([0.70, 0.20, 0.24])
_MARK = np.array([0.55, 0.14, 0.14])
_NUM_MARKS = 3


def _palette(colors: np.ndarray, u: np.ndarray, jitter: np.ndarray, amount: float) -> np.ndarray:
    """Pick `colors[floor(u * len)]` per row and add `amount * (2 jitter - 1)`."""
    index = np.minimum((u * len(colors)).astype(np.int64), len(colors) - 1)
    return np.clip(colors[index] + amount * (2 * jitter - 1), 0.0, 1.0)


def identity_parameters(seed: int, identity_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The face parameters of each identity (float32 arrays with first axis = identity).

    Units: positions and sizes in face coordinates (the face oval is about 1.1 wide and
    1.4 tall, centred near the origin, +y down); colours RGB in [0, 1]; angles in radians;
    texture frequencies in cycles per face unit.
    """
    ids = np.asarray(identity_ids, dtype=np.int64).reshape(-1)
    draw = _Draw(_uniforms(_keys(seed, _STREAM_IDENTITY, ids), 64))
    p: dict[str, np.ndarray] = {}
    p["face_rx"] = draw(0.47, 0.62)
    p["face_ry"] = draw(0.62, 0.78)
    p["face_taper"] = draw(0.0, 0.35)
    tone = draw()[:, None]
    p["skin"] = np.clip(
        _SKIN_LIGHT + tone * (_SKIN_DARK - _SKIN_LIGHT) + 0.05 * (2 * draw(n=3) - 1), 0, 1
    )
    p["hair"] = _palette(_HAIR, draw(), draw(n=3), 0.05)
    p["hair_volume"] = draw(1.02, 1.25)
    p["hair_length"] = draw() ** 2
    bald = draw() < 0.08
    p["hairline"] = np.where(bald, -1.2, draw(-0.62, -0.28))
    p["hair_curve"] = draw(-0.4, 0.8)
    p["hair_part"] = draw(-0.35, 0.35)
    p["eye_sep"] = draw(0.18, 0.29)
    p["eye_y"] = draw(-0.14, 0.02)
    p["eye_rx"] = draw(0.065, 0.11)
    p["eye_ry"] = draw(0.032, 0.06)
    p["iris"] = _palette(_IRIS, draw(), draw(n=3), 0.05)
    p["iris_size"] = draw(0.45, 0.75)
    p["brow_gap"] = draw(0.08, 0.17)
    p["brow_len"] = draw(0.08, 0.15)
    p["brow_thick"] = draw(0.012, 0.04)
    p["brow_slope"] = draw(-0.4, 0.4)
    p["nose_len"] = draw(0.14, 0.30)
    p["nose_w"] = draw(0.045, 0.10)
    p["nose_shade"] = draw(0.15, 0.45)
    p["mouth_y"] = draw(0.36, 0.52)
    p["mouth_w"] = draw(0.11, 0.22)
    p["mouth_thick"] = draw(0.022, 0.05)
    p["mouth_curve"] = draw(-1.2, 2.0)
    lip = draw()[:, None]
    p["lip"] = np.clip(0.8 * p["skin"] + lip * (_LIP - 0.8 * p["skin"]) * 0.8, 0, 1)
    p["beard"] = np.where(draw() < 0.22, draw(0.5, 0.9), 0.0)
    p["tex_freq"] = draw(2.0, 7.0, n=2)
    p["tex_angle"] = draw(0.0, math.pi, n=2)
    p["tex_phase"] = draw(0.0, 2 * math.pi, n=2)
    p["tex_amp"] = draw(0.015, 0.06, n=2)
    p["mark_x"] = draw(-0.42, 0.42, n=_NUM_MARKS)
    p["mark_y"] = draw(-0.35, 0.62, n=_NUM_MARKS)
    p["mark_sigma"] = draw(0.015, 0.05, n=_NUM_MARKS)
    p["mark_strength"] = draw(n=_NUM_MARKS) ** 1.5
    red = draw()[:, None]
    p["mark_color"] = 0.35 * p["skin"] + red * (_MARK - 0.35 * p["skin"])
    return {k: v.astype(np.float32) for k, v in p.items()}


def nuisance_parameters(
    seed: int, identity_ids: np.ndarray, sample_indices: np.ndarray, difficulty: float
) -> dict[str, np.ndarray]:
    """The per-sample nuisance of each (identity, sample) pair, scaled by `difficulty`.

    Units: shifts in image units (the image spans [-1, 1]); blur sigma in image units
    (1 px = 2 / size); noise sigma in [0, 1] intensity units; angles in radians.
    """
    ids = np.asarray(identity_ids, dtype=np.int64).reshape(-1)
    samples = np.asarray(sample_indices, dtype=np.int64).reshape(-1)
    keys = _keys(seed, _STREAM_SAMPLE, ids, samples)
    draw = _Draw(_uniforms(keys, 64))
    d = float(difficulty)
    p: dict[str, np.ndarray] = {}
    p["tx"] = draw(-0.06, 0.06) * d
    p["ty"] = draw(-0.06, 0.06) * d
    p["scale"] = np.exp(draw(-0.07, 0.07) * d)
    p["angle"] = draw(-0.14, 0.14) * d
    p["yaw"] = draw(-0.07, 0.07) * d
    p["eye_open"] = np.clip(1.0 - 0.9 * d * draw() ** 4, 0.08, 1.0)
    p["gaze"] = draw(-0.25, 0.25) * d
    p["eye_dy"] = draw(-0.015, 0.015) * d
    p["brow_raise"] = draw(-0.02, 0.035) * d
    p["smile"] = draw(-0.7, 1.05) * d
    p["mouth_open"] = 1.0 + 1.4 * d * draw() ** 3
    p["mouth_dy"] = draw(-0.018, 0.018) * d
    p["hairline_dy"] = draw(-0.035, 0.035) * d
    p["nose_dy"] = draw(-0.014, 0.014) * d
    p["bg0"] = draw(n=3)
    p["bg1"] = draw(n=3)
    p["bg_angle"] = draw(0.0, 2 * math.pi)
    p["blob_xy"] = draw(-1.0, 1.0, n=2)
    p["blob_r"] = draw(0.2, 0.6)
    p["blob_color"] = draw(n=3)
    p["blob_on"] = (draw() < 0.7).astype(np.float64)
    p["clothes"] = draw(n=3)
    p["brightness"] = draw(-0.15, 0.15) * d
    p["contrast"] = np.exp(draw(-0.35, 0.2) * d)
    p["gain"] = np.exp(draw(-0.12, 0.12, n=3) * d)
    p["light"] = draw(0.0, 0.6) * d
    p["light_angle"] = draw(0.0, 2 * math.pi)
    p["blur"] = 0.042 * d * draw() ** 2
    p["noise"] = (0.007 + 0.035 * draw()) * d
    p["occluder_on"] = (draw() < min(1.0, 0.25 * d)).astype(np.float64)
    p["occluder_xy"] = np.stack([draw(-0.5, 0.5), draw(-0.5, 0.7)], axis=1)
    p["occluder_r"] = draw(0.1, 0.4, n=2)
    p["occluder_color"] = draw(n=3)
    p["noise_offset"] = draw(n=2)
    p["noise_flip"] = draw(n=3)
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def noise_bank(seed: int, size: int) -> np.ndarray:
    """A fixed `(3, 2 size, 2 size)` field of i.i.d. N(0, 1) float32 values for the seed.

    Each sample reads a `size x size` window of it at a random offset, with random flips
    and transposition: a fresh Gaussian noise field per sample at the cost of a gather.
    """
    n = 3 * (2 * size) ** 2
    u = _uniforms(_keys(seed, _STREAM_NOISE, np.arange(n)), 2)
    # Box-Muller
    z = np.sqrt(-2.0 * np.log1p(-u[:, 0])) * np.cos(2 * math.pi * u[:, 1])
    return z.astype(np.float32).reshape(3, 2 * size, 2 * size)


# ---------------------------------------------------------------------- rendering
def _b(t: Tensor) -> Tensor:
    """Per-sample parameters `(B,)` / `(B, n)` -> `(B, 1, 1, 1)` / `(B, n, 1, 1)`."""
    return t.reshape(t.shape[0], -1, 1, 1)


def _ellipse(
    x: Tensor, y: Tensor, cx: Tensor | float, cy: Tensor | float, rx: Tensor | float,
    ry: Tensor | float, w: Tensor,
) -> Tensor:
    """Soft coverage in [0, 1] of an axis-aligned ellipse; the edge ramp is `4 w` wide.

    Uses the signed-distance approximation (q - 1) r_min / 2 of the quadratic form q, exact
    at the boundary, where the soft edge lives.
    """
    rx, ry = torch.as_tensor(rx), torch.as_tensor(ry)
    q = ((x - cx) / rx).square_() + ((y - cy) / ry).square_()
    return _ramp((1.0 - q).mul_(torch.minimum(rx, ry) / (2.0 * w)))


def _ramp(z: Tensor) -> Tensor:
    """In place: a linear ramp with the slope of the logistic at 0, clamped to [0, 1].

    Used for every soft edge instead of the logistic: exactly 0 / 1 away from the edge,
    so no denormal floats (which are ~100x slower on x86) ever appear.
    """
    return z.mul_(0.25).add_(0.5).clamp_(0.0, 1.0)


def _over(image: Tensor, color: Tensor, alpha: Tensor) -> Tensor:
    """Alpha-composite `color` (B,3,1,1 or B,3,H,W) over `image` in place."""
    return image.add_((color - image).mul_(alpha))


_FACE_CY = 0.08  # face-space height of the face oval's centre


@dataclass(frozen=True)
class _Frame:
    """Pixel-centre coordinates of a batch: image space `(u, v)` in [-1, 1] (`(1,1,1,S)` and
    `(1,1,S,1)`), face space `(x, y)` (scaled, rotated, shifted per sample, `(B,1,S,S)`),
    and the soft-edge widths `w` (face space) and `w_img` (image space)."""

    u: Tensor
    v: Tensor
    x: Tensor
    y: Tensor
    w: Tensor
    w_img: Tensor


def _frame(n: dict[str, Tensor], size: int) -> _Frame:
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    u = coords.view(1, 1, 1, size)
    v = coords.view(1, 1, size, 1)
    pixel = 2.0 / size
    w_img = _b(torch.sqrt((0.35 * pixel) ** 2 + (0.55 * n["blur"]) ** 2))
    scale = _b(n["scale"])
    cos, sin = _b(torch.cos(n["angle"])), _b(torch.sin(n["angle"]))
    du, dv = u - _b(n["tx"]), v - _b(n["ty"])
    x = (cos * du + sin * dv) / scale
    y = (cos * dv - sin * du) / scale
    return _Frame(u, v, x, y, w_img / scale, w_img)


def render_faces(
    ident: dict[str, Tensor], nuis: dict[str, Tensor], noise: Tensor, size: int
) -> Tensor:
    """Render B faces: parameter dicts of `(B, ...)` float32 tensors -> uint8 `(B, 3, S, S)`.

    `noise` is the `(B, 3, S, S)` unit Gaussian field of each sample (scaled here by the
    sample's noise sigma). Layers are painted back to front, each in its own function.
    """
    f = _frame(nuis, size)
    image = _background(f, nuis)
    face = _head(image, f, ident, nuis)
    xf = f.x - _b(nuis["yaw"])  # inner features follow the yaw
    _marks(image, f, xf, ident, nuis, face)
    _nose_and_beard(image, f, xf, ident, nuis, face)
    _eyes_and_brows(image, f, xf, ident, nuis)
    _mouth(image, f, xf, ident, nuis)
    _fringe_and_occluder(image, f, ident, nuis)
    return _camera(image, f, nuis, noise)


def _background(f: _Frame, n: dict[str, Tensor]) -> Tensor:
    """A gradient between two colours, plus a blob: the `(B, 3, S, S)` canvas."""
    ang = n["bg_angle"]
    t = (_b(torch.cos(ang)) * f.u + _b(torch.sin(ang)) * f.v).mul_(0.5).add_(0.5)
    bg0, bg1 = _b(n["bg0"]), _b(n["bg1"])
    image = bg0 + (bg1 - bg0) * t
    bxy, br = n["blob_xy"], _b(n["blob_r"])
    blob = _ellipse(f.u, f.v, _b(bxy[:, 0]), _b(bxy[:, 1]), br, br * 0.8, f.w_img)
    return _over(image, _b(n["blob_color"]), blob.mul_(_b(n["blob_on"])))


def _sigma_face(n: dict[str, Tensor]) -> Tensor:
    """The blur in face-space units, `(B, 1)`."""
    return (n["blur"] / n["scale"])[:, None]


def _head(image: Tensor, f: _Frame, p: dict[str, Tensor], n: dict[str, Tensor]) -> Tensor:
    """Hair behind the head, clothes, neck, then the textured face oval; returns its mask."""
    x, y, w = f.x, f.y, f.w
    face_rx, face_ry = _b(p["face_rx"]), _b(p["face_ry"])
    vol, length = _b(p["hair_volume"]), _b(p["hair_length"])
    skin = _b(p["skin"])
    back = _ellipse(x, y, 0.0, _FACE_CY - 0.1 + 0.3 * length, face_rx * vol * 1.05,
                    face_ry * (vol + 0.6 * length), w)
    _over(image, _b(p["hair"]), back.mul_((_b(p["hairline"]) > -1.0).float()))
    _over(image, _b(n["clothes"]), _ellipse(x, y, 0.0, 1.3, 0.95, 0.45, w))
    _over(image, skin * 0.82, _ellipse(x, y, 0.0, 0.85, 0.22 * face_rx / 0.55, 0.35, w))

    # the face oval (tapering towards the chin) with its skin texture
    yaw = _b(n["yaw"])
    below = (y - _FACE_CY).clamp_(min=0.0) / face_ry
    rx_eff = face_rx * (1.0 - 0.25 * yaw.abs()) * (1.0 - _b(p["face_taper"]) * below)
    face = _ellipse(x, y, 0.3 * yaw, _FACE_CY, rx_eff, face_ry, w)
    freq = p["tex_freq"]
    # a blurred sinusoid keeps the fraction exp(-2 pi^2 f^2 sigma^2) of its amplitude
    amp = p["tex_amp"] * torch.exp(-2 * math.pi**2 * freq.square() * _sigma_face(n).square())
    kx = 2 * math.pi * freq * torch.cos(p["tex_angle"])
    ky = 2 * math.pi * freq * torch.sin(p["tex_angle"])
    texture = (_b(amp) * torch.sin(_b(kx) * x + _b(ky) * y + _b(p["tex_phase"]))).sum(
        1, keepdim=True
    )
    _over(image, skin * (1.0 + texture), face)
    return face


def _marks(
    image: Tensor, f: _Frame, xf: Tensor, p: dict[str, Tensor], n: dict[str, Tensor],
    face: Tensor,
) -> None:
    """Moles and freckles: Gaussian spots on the face, weakened by the blur."""
    sigma_face = _sigma_face(n)
    sig2 = p["mark_sigma"].square() + sigma_face.square()
    strength = p["mark_strength"] * p["mark_sigma"].square() / sig2
    r2 = (xf - _b(p["mark_x"])).square_() + (f.y - _b(p["mark_y"])).square_()
    r2 = r2.mul_(_b(-0.5 / sig2)).clamp_(min=-30.0)  # exp(-30) ~ 1e-13: keeps clear of denormals
    marks = torch.exp_(r2).mul_(_b(strength)).amax(1, keepdim=True)
    _over(image, _b(p["mark_color"]), marks.mul_(face))


_SIDES = (-1.0, 1.0)  # left and right of the face's vertical axis


def _nose_and_beard(
    image: Tensor, f: _Frame, xf: Tensor, p: dict[str, Tensor], n: dict[str, Tensor],
    face: Tensor,
) -> None:
    """The beard below the nose (where present), then the nose: a shaded ridge, two nostrils."""
    y, w, skin = f.y, f.w, _b(p["skin"])
    nose_top = _b(p["eye_y"]) + 0.04
    nose_bottom = nose_top + _b(p["nose_len"]) + _b(n["nose_dy"])
    if bool((p["beard"] > 0).any()):
        beard = _ramp((y - nose_bottom - 0.04).div_(w + 0.02)).mul_(face)
        _over(image, _b(p["hair"]), beard.mul_(_b(p["beard"])))
    nose_w = _b(p["nose_w"])
    ridge = _ellipse(xf, y, 0.0, (nose_top + nose_bottom) / 2, nose_w,
                     (nose_bottom - nose_top) / 2, w)
    _over(image, skin * 0.72, ridge.mul_(_b(p["nose_shade"])))
    side = torch.tensor(_SIDES).view(1, 2, 1, 1)
    nostril_r = nose_w * 0.3
    nostrils = _ellipse(xf, y, side * nose_w * 0.55, nose_bottom, nostril_r, nostril_r * 0.6, w)
    _over(image, skin * 0.4, nostrils.amax(1, keepdim=True).mul_(0.8))


def _eyes_and_brows(
    image: Tensor, f: _Frame, xf: Tensor, p: dict[str, Tensor], n: dict[str, Tensor]
) -> None:
    """Sclera and iris opened by the sample's eye openness, then tilted, mirrored brows."""
    y, w = f.y, f.w
    side = torch.tensor(_SIDES).view(1, 2, 1, 1)
    eye_x = side * _b(p["eye_sep"])
    eye_y = _b(p["eye_y"]) + _b(n["eye_dy"])
    eye_rx, eye_ry = _b(p["eye_rx"]), _b(p["eye_ry"]) * _b(n["eye_open"])
    sclera = _ellipse(xf, y, eye_x, eye_y, eye_rx, eye_ry, w)
    _over(image, 0.25 * _b(p["skin"]) + 0.7, sclera.amax(1, keepdim=True))
    iris_r = _b(p["iris_size"]) * _b(p["eye_ry"])
    iris = _ellipse(xf, y, eye_x + _b(n["gaze"]) * eye_rx, eye_y, iris_r, iris_r, w)
    _over(image, _b(p["iris"]), iris.mul_(sclera).amax(1, keepdim=True))

    brow_y = eye_y - _b(p["brow_gap"]) - _b(n["brow_raise"])
    slope = side * _b(p["brow_slope"])
    bc, bs = torch.cos(slope), torch.sin(slope)
    dx, dy = xf - eye_x, y - brow_y
    brow = _ellipse(bc * dx + bs * dy, bc * dy - bs * dx, 0.0, 0.0, _b(p["brow_len"]),
                    _b(p["brow_thick"]), w)
    _over(image, _b(p["hair"]) * 0.75, brow.amax(1, keepdim=True))


def _mouth(
    image: Tensor, f: _Frame, xf: Tensor, p: dict[str, Tensor], n: dict[str, Tensor]
) -> None:
    """A curved band: a smile bends it, an open mouth thickens and darkens it."""
    y, w = f.y, f.w
    mouth_y = _b(p["mouth_y"]) + _b(n["mouth_dy"])
    curve = _b(p["mouth_curve"]) + _b(n["smile"])
    half = _b(p["mouth_thick"]) * _b(n["mouth_open"]) / 2
    centre = mouth_y - curve * xf.square()
    across = _ramp((half - (y - centre).abs_()).div_(w))
    along = _ramp((_b(p["mouth_w"]) - xf.abs()).div_(w))
    open_dark = (_b(n["mouth_open"]) - 1.0).clamp(max=2.0) * 0.25
    _over(image, _b(p["lip"]) * (1.0 - open_dark), across.mul_(along))


def _fringe_and_occluder(
    image: Tensor, f: _Frame, p: dict[str, Tensor], n: dict[str, Tensor]
) -> None:
    """Hair on the head above the (curved, parted) hairline, then the image-space occluder."""
    x, y, w = f.x, f.y, f.w
    vol = _b(p["hair_volume"])
    cap = _ellipse(x, y, 0.0, _FACE_CY - 0.02, _b(p["face_rx"]) * vol,
                   _b(p["face_ry"]) * vol * 1.02, w)
    hairline = _b(p["hairline"]) + _b(n["hairline_dy"])
    line = hairline + _b(p["hair_curve"]) * (x - _b(p["hair_part"])).square()
    _over(image, _b(p["hair"]), cap.mul_(_ramp((line - y).div_(w))))

    oxy, orr = n["occluder_xy"], n["occluder_r"]
    occ = _ellipse(f.u, f.v, _b(oxy[:, 0]), _b(oxy[:, 1]), _b(orr[:, 0]), _b(orr[:, 1]), f.w_img)
    _over(image, _b(n["occluder_color"]), occ.mul_(_b(n["occluder_on"])))


def _camera(image: Tensor, f: _Frame, n: dict[str, Tensor], noise: Tensor) -> Tensor:
    """Colour cast, illumination gradient, contrast, brightness, noise -> uint8."""
    la = n["light_angle"]
    light = (_b(torch.cos(la)) * f.u + _b(torch.sin(la)) * f.v).mul_(_b(n["light"])).add_(1.0)
    image.mul_(_b(n["gain"])).mul_(light)
    image.sub_(0.5).mul_(_b(n["contrast"])).add_(_b(n["brightness"]) + 0.5)
    image.add_(noise.mul(_b(n["noise"])))
    return image.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


# ------------------------------------------------------------------------ datasets
@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block, then restore the thread count.

    Rendering is a few hundred small elementwise ops: intra-op threads only add
    synchronization, which on a busy 2-core machine made it 5-50x slower. (DataLoader
    workers already run with one thread; this matters when rendering in the main process.)
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SyntheticFaces(Dataset):
    """Items `(uint8 (3, S, S) tensor, int label)` rendered on the fly.

    Item i shows identity `identity_ids[rows[i]]` as sample `sample_indices[i]`, labelled
    `labels[i]`. All state is immutable numpy arrays, so the dataset pickles cheaply into
    DataLoader workers; `__getitems__` renders a whole batch in vectorized passes.
    """

    def __init__(
        self,
        *,
        seed: int,
        image_size: int,
        difficulty: float,
        identity_ids: np.ndarray,
        rows: np.ndarray,
        sample_indices: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        if not 8 <= image_size <= 1024:
            raise UserError(f"synthetic image_size must be within 8..1024 pixels, got {image_size}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.difficulty = float(difficulty)
        self.identity_ids = np.asarray(identity_ids, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.sample_indices = np.asarray(sample_indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if not len(self.rows) == len(self.sample_indices) == len(self.labels):
            raise ValueError("rows, sample_indices and labels must have the same length")
        self.identities = identity_parameters(self.seed, self.identity_ids)
        self.noise = noise_bank(self.seed, self.image_size)

    def __len__(self) -> int:
        return int(len(self.labels))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.render([index])[0], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        """Batched fetch used by `DataLoader` (one vectorized render for the batch)."""
        images = self.render(indices)
        labels = self.labels[np.asarray(indices, dtype=np.int64)]
        return [(images[i], int(labels[i])) for i in range(len(images))]

    def render(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        """Render items `indices` -> uint8 `(len(indices), 3, S, S)`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = torch.empty((len(idx), 3, self.image_size, self.image_size), dtype=torch.uint8)
        with _one_thread():
            self._render_into(out, idx)
        return out

    def _render_into(self, out: Tensor, idx: np.ndarray) -> None:
        """Fill `out` with items `idx`, `_CHUNK` images per vectorized pass."""
        for start in range(0, len(idx), _CHUNK):
            chunk = idx[start : start + _CHUNK]
            rows = self.rows[chunk]
            ident = {k: torch.from_numpy(v[rows]) for k, v in self.identities.items()}
            nuis_np = nuisance_parameters(
                self.seed, self.identity_ids[rows], self.sample_indices[chunk], self.difficulty
            )
            nuis = {k: torch.from_numpy(v) for k, v in nuis_np.items()}
            noise = self._noise(nuis_np)
            out[start : start + len(chunk)] = render_faces(ident, nuis, noise, self.image_size)

    def _noise(self, nuis: dict[str, np.ndarray]) -> Tensor:
        """Each sample's `S x S` window of the noise bank (random offset, flips, transpose)."""
        s = self.image_size
        offsets = np.minimum((nuis["noise_offset"] * (s + 1)).astype(np.int64), s)
        flips = nuis["noise_flip"] < 0.5
        ar = np.arange(s)
        rows = offsets[:, 0, None] + np.where(flips[:, 0, None], ar[::-1], ar)
        cols = offsets[:, 1, None] + np.where(flips[:, 1, None], ar[::-1], ar)
        window = self.noise[:, rows[:, :, None], cols[:, None, :]]  # (3, B, S, S)
        window = np.where(flips[None, :, 2, None, None], window.swapaxes(2, 3), window)
        return torch.from_numpy(np.ascontiguousarray(window.transpose(1, 0, 2, 3)))


def class_sizes(
    num_classes: int, profile: str, min_images: int, max_images: int, seed: int = 0
) -> np.ndarray:
    """Images per class (int64 `(num_classes,)`); see the module docstring for the formula."""
    if profile == "uniform":
        return np.full(num_classes, max_images, dtype=np.int64)
    if profile != "casia-like":
        raise UserError(f"unknown synthetic profile {profile!r}; choose casia-like or uniform")
    q = np.arange(num_classes) / max(num_classes - 1, 1)
    sizes = np.rint(min_images / (1.0 - q * (1.0 - min_images / max_images))).astype(np.int64)
    sizes = np.clip(sizes, min_images, max_images)
    order = np.argsort(_uniforms(_keys(seed, _STREAM_SIZES, np.arange(num_classes)), 1)[:, 0])
    return sizes[order]


def _expand(sizes: np.ndarray, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, sample indices) listing `sizes[c]` samples of every class c in class order."""
    labels = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    starts = np.cumsum(sizes) - sizes
    samples = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes) + offset
    return labels, samples


def _source_fields(source: Any) -> tuple[int, int, float]:
    """(seed, image size, difficulty) of a `SyntheticSource`."""
    return int(source.seed), int(source.image_size), float(getattr(source, "difficulty", 1.0))


def synthetic_train_data(source: Any) -> tuple[SyntheticFaces, SyntheticFaces | None, np.ndarray]:
    """(training set, closed-set test split or None, class sizes) of a `SyntheticSource`.

    The test split holds `test_images_per_class` further samples of every training class
    (sample indices from `TEST_SAMPLE_OFFSET`, never used for training).
    """
    seed, size, difficulty = _source_fields(source)
    if source.max_images >= TEST_SAMPLE_OFFSET:
        raise UserError(f"synthetic max_images must be below {TEST_SAMPLE_OFFSET}")
    sizes = class_sizes(source.num_classes, source.profile, source.min_images,
                        source.max_images, seed)
    ids = np.arange(source.num_classes, dtype=np.int64)
    labels, samples = _expand(sizes)
    common = dict(seed=seed, image_size=size, difficulty=difficulty, identity_ids=ids)
    train = SyntheticFaces(rows=labels, sample_indices=samples, labels=labels, **common)
    test = None
    if source.test_images_per_class > 0:
        per = np.full(source.num_classes, source.test_images_per_class, dtype=np.int64)
        t_labels, t_samples = _expand(per, TEST_SAMPLE_OFFSET)
        test = SyntheticFaces(rows=t_labels, sample_indices=t_samples, labels=t_labels, **common)
    return train, test, sizes


class SyntheticPairs(NamedTuple):
    """The held-out pairs: `images` (a dataset of uint8 (3, H, W)), `pairs` int64 (P, 2)
    indices into it, `issame` bool (P,), and the number of contiguous `folds`."""

    images: SyntheticFaces
    pairs: np.ndarray
    issame: np.ndarray
    folds: int


def synthetic_pairs(source: Any) -> SyntheticPairs:
    """Open-set pairs on held-out identities in the LFW layout, deterministic from the seed
    (`eqmcli.evaluation.pair_sets.synthetic_verification_set` makes them a verification set).

    `verification_identities` identities with ids `VERIFICATION_ID_OFFSET + j` (disjoint
    from every training id). `verification_folds` contiguous folds, each of
    `verification_pairs_per_fold` matched pairs followed by as many mismatched pairs.
    When there are at least two identities per fold, the identities are split between
    the folds (as LFW's folds are person-disjoint); otherwise every fold draws from all.
    Every image is a distinct sample: pair k uses images 2k and 2k + 1.
    """
    seed, size, difficulty = _source_fields(source)
    folds = int(source.verification_folds)
    per_fold = int(source.verification_pairs_per_fold)
    num_ids = int(source.verification_identities)
    order = np.argsort(_uniforms(_keys(seed, _STREAM_PAIRS, np.arange(num_ids)), 1)[:, 0])
    disjoint = num_ids >= 2 * folds
    groups = [order[f::folds] if disjoint else order for f in range(folds)]
    total = 2 * folds * per_fold
    u = _uniforms(_keys(seed, _STREAM_PAIRS, -1 - np.arange(total)), 2)
    first = np.empty(total, dtype=np.int64)
    second = np.empty(total, dtype=np.int64)
    for f, group in enumerate(groups):
        g = len(group)
        block = slice(2 * f * per_fold, 2 * (f + 1) * per_fold)
        a = np.minimum((u[block, 0] * g).astype(np.int64), g - 1)
        b = np.minimum((u[block, 1] * (g - 1)).astype(np.int64), g - 2)
        b = b + (b >= a)  # a different member of the group
        b[:per_fold] = a[:per_fold]  # matched pairs: the same identity
        first[block], second[block] = group[a], group[b]
    rows = np.stack([first, second], axis=1).reshape(-1)
    # give every image of an identity its own sample index
    sample = np.empty_like(rows)
    for j in np.unique(rows):
        where = np.flatnonzero(rows == j)
        sample[where] = np.arange(len(where))
    images = SyntheticFaces(
        seed=seed, image_size=size, difficulty=difficulty,
        identity_ids=VERIFICATION_ID_OFFSET + np.arange(num_ids, dtype=np.int64),
        rows=rows, sample_indices=sample, labels=rows,
    )
    pairs = np.arange(2 * total, dtype=np.int64).reshape(total, 2)
    issame = np.tile(np.repeat([True, False], per_fold), folds)
    return SyntheticPairs(images, pairs, issame, folds)
