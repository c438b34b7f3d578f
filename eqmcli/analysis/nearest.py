"""The nearest other class centre of every class (the inter-class margin of the imbalance study).

At MS1M scale (C = 85,742 centres, d = 512) the C x C cosine matrix has 7.4e9 entries,
so it is never held whole. `nearest_centers`:

1. normalizes the centres in float64 (a chunk at a time) and keeps them as float32;
2. walks the upper triangle of the cosine matrix in square blocks, computed into one
   reused buffer, so each pair of classes is multiplied once (the matrix is symmetric);
   each block's row maxima and column maxima give every class its best float32 cosine
   per block of other classes;
3. recomputes in float32 only the blocks whose maximum lies within
   `2 * float32_error_bound(d)` of the class's best, and keeps as candidates the classes
   within that distance of the best (an entry further below can never be the exact
   nearest one; see `float32_error_bound`): about one block and one candidate per class;
4. recomputes the candidates in float64 and keeps the best, the lowest class index on
   an exact tie.

The answer is therefore that of the exact float64 search for every class, not just for
most of them. A class with more than `MAX_CANDIDATES` candidates (a degenerate head,
e.g. many equal centres) is resolved by an exact float64 scan of its row instead.
`exact_nearest` is that plain float64 scan (the reference; also used by the tests and by
`eqm bench analysis --check`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from eqmcli.devices import full_float32_matmul
from eqmcli.errors import UserError

FLOAT32_UNIT_ROUNDOFF = 2.0**-24
MAX_CANDIDATES = 32
"""Candidates per class kept before that class falls back to an exact float64 row scan."""

DEFAULT_BLOCK = {"cpu": 2048, "cuda": 8192}
"""Block side per device type: 2048 x 2048 float32 (16 MiB) stays in a CPU's cache."""

EXACT_ROWS, EXACT_COLUMNS = 1024, 8192
"""Chunk shape of the float64 reference scan (64 MiB of float64 cosines)."""

PAIR_CHUNK = 8192
"""Candidate pairs re-checked in float64 at once (2 x 8192 x d float64 rows)."""


def float32_error_bound(dim: int) -> float:
    """A bound on |float32 cosine - exact cosine| for unit vectors of dimension `dim`.

    The centres are normalized in float64 and rounded once to float32 (relative error u
    = 2^-24 per component, so at most 2u + u^2 on the dot product); a float32 dot
    product of length d in any summation order adds at most gamma_d = d u / (1 - d u)
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Sec. 3.1). (d + 4) u
    covers both for any d u << 1 (d = 512: 3.1e-5).
    """
    return (dim + 4) * FLOAT32_UNIT_ROUNDOFF


def _unit_rows64(w: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of `w`, L2-normalized in float64."""
    return torch.nn.functional.normalize(w[start:stop].double(), dim=1, eps=1e-300)


def _unit_float32(w: torch.Tensor, device: torch.device, chunk: int = 8192) -> torch.Tensor:
    """All rows normalized in float64 and rounded once to float32, on `device`."""
    out = torch.empty(w.shape, dtype=torch.float32, device=device)
    for start in range(0, w.shape[0], chunk):
        stop = min(start + chunk, w.shape[0])
        out[start:stop] = _unit_rows64(w, start, stop).float()
    return out


class _CandidateSet:
    """Candidate (class, other class) pairs; a class with too many becomes `crowded`."""

    def __init__(self, num: int, device: torch.device) -> None:
        self.counts = torch.zeros(num, dtype=torch.int64, device=device)
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.size = 0
        self.limit = 4 * num + (1 << 20)

    def add(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Record pairs; those of rows over `MAX_CANDIDATES` are dropped (exact scan later)."""
        self.counts += torch.bincount(rows, minlength=self.counts.shape[0])
        keep = self.counts[rows] <= MAX_CANDIDATES
        self.parts.append((rows[keep], cols[keep]))
        self.size += int(keep.sum())
        if self.size > self.limit:
            self._compact()

    def _compact(self) -> None:
        rows, cols = (torch.cat(p) for p in zip(*self.parts, strict=True))
        keep = self.counts[rows] <= MAX_CANDIDATES
        self.parts = [(rows[keep], cols[keep])]
        self.size = int(keep.sum())
        self.limit = max(self.limit, 2 * self.size)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(candidate rows, candidate columns, crowded rows) as int64 numpy arrays."""
        if not self.parts:
            self.parts = [(self.counts[:0], self.counts[:0])]
        self._compact()
        rows, cols = self.parts[0]
        crowded = torch.nonzero(self.counts > MAX_CANDIDATES).squeeze(1)
        return rows.cpu().numpy(), cols.cpu().numpy(), crowded.cpu().numpy()


def _block_maxima(unit: torch.Tensor, block: int, buffer: torch.Tensor) -> torch.Tensor:
    """(C, number of blocks) float32: the largest cosine of each class in each column block.

    Each pair of blocks is multiplied once into `buffer` (at least block^2 floats): its
    row maxima serve the rows, its column maxima the columns (the matrix is symmetric).
    """
    num = unit.shape[0]
    starts = range(0, num, block)
    maxima = torch.full((num, len(starts)), -math.inf, device=unit.device)
    for i, r0 in enumerate(starts):
        r1 = min(r0 + block, num)
        for j, c0 in enumerate(starts[i:], start=i):
            c1 = min(c0 + block, num)
            sims = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            torch.mm(unit[r0:r1], unit[c0:c1].T, out=sims)
            if i == j:
                sims.fill_diagonal_(-math.inf)
            else:
                maxima[c0:c1, i] = sims.amax(dim=0)
            maxima[r0:r1, j] = sims.amax(dim=1)
    return maxima


def _float32_candidates(
    w: torch.Tensor, block: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (class i, class j) and crowded classes, from two float32 passes.

    Pass 1 finds each class's best float32 cosine per column block (`_block_maxima`);
    pass 2 recomputes, for each class, only the blocks whose maximum lies within
    delta = 2 * `float32_error_bound` of the class's best, and keeps the entries within
    delta of it. The exact nearest class j* is always kept: its float32 cosine (in
    either pass) is at least exact(j*) - bound >= best - 2 * bound.
    """
    num = w.shape[0]
    delta = 2 * float32_error_bound(w.shape[1])
    found = _CandidateSet(num, device)
    with full_float32_matmul(device):
        unit = _unit_float32(w, device)
        buffer = torch.empty(block * block, device=device)
        maxima = _block_maxima(unit, block, buffer)
        threshold = maxima.amax(dim=1) - delta
        near = maxima >= threshold.unsqueeze(1)
        del maxima
        for j, c0 in enumerate(range(0, num, block)):
            c1 = min(c0 + block, num)
            for rows in torch.nonzero(near[:, j]).squeeze(1).split(block):
                sims = buffer[: rows.numel() * (c1 - c0)].view(rows.numel(), c1 - c0)
                torch.mm(unit[rows], unit[c0:c1].T, out=sims)
                own = torch.nonzero((rows >= c0) & (rows < c1)).squeeze(1)
                sims[own, rows[own] - c0] = -math.inf
                hit_row, hit_col = torch.nonzero(
                    sims >= threshold[rows].unsqueeze(1), as_tuple=True
                )
                found.add(rows[hit_row], hit_col + c0)
    return found.finish()


def _pair_cosines64(w: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 cosine of each (rows[k], cols[k]) pair, normalizing in float64."""
    out = np.empty(rows.shape[0], dtype=np.float64)
    for start in range(0, rows.shape[0], PAIR_CHUNK):
        stop = min(start + PAIR_CHUNK, rows.shape[0])
        a = w[torch.from_numpy(rows[start:stop])].double()
        b = w[torch.from_numpy(cols[start:stop])].double()
        a = torch.nn.functional.normalize(a, dim=1, eps=1e-300)
        b = torch.nn.functional.normalize(b, dim=1, eps=1e-300)
        out[start:stop] = (a * b).sum(dim=1).numpy()
    return out


def _best_per_row(
    rows: np.ndarray, cols: np.ndarray, cos: np.ndarray, num: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row the highest cosine and its column (lowest column on a tie); -inf/-1 if none."""
    best_cos = np.full(num, -np.inf)
    nearest = np.full(num, -1, dtype=np.int64)
    order = np.lexsort((cols, -cos, rows))
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]] if order.size else order
    best_cos[rows[first]] = cos[first]
    nearest[rows[first]] = cols[first]
    return best_cos, nearest


def exact_nearest(
    centers: torch.Tensor, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The plain float64 search: (cosine to the nearest other centre, its index) per row.

    Every centre is normalized in float64 and compared with every other one; on an exact
    tie the lowest index wins. `rows` limits the search to those classes (default: all).
    Memory is O(EXACT_ROWS x EXACT_COLUMNS); time O(len(rows) x C x d).
    """
    w = centers.detach().to(device="cpu", dtype=torch.float32)
    num = w.shape[0]
    rows = np.arange(num, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    best_cos = np.full(rows.shape[0], -np.inf)
    nearest = np.full(rows.shape[0], -1, dtype=np.int64)
    for start in range(0, rows.shape[0], EXACT_ROWS):
        chunk = torch.from_numpy(rows[start : start + EXACT_ROWS])
        a = torch.nn.functional.normalize(w[chunk].double(), dim=1, eps=1e-300)
        for c0 in range(0, num, EXACT_COLUMNS):
            c1 = min(c0 + EXACT_COLUMNS, num)
            sims = a @ _unit_rows64(w, c0, c1).T
            own = (chunk >= c0) & (chunk < c1)
            sims[own.nonzero().squeeze(1), chunk[own] - c0] = -math.inf
            value, index = sims.max(dim=1)
            value, index = value.numpy(), index.numpy() + c0
            better = value > best_cos[start : start + chunk.numel()]
            best_cos[start : start + chunk.numel()][better] = value[better]
            nearest[start : start + chunk.numel()][better] = index[better]
    return best_cos, nearest


def nearest_centers_cosine(
    centers: torch.Tensor, block: int | None = None, *, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(float64 cosine to the nearest other centre, its index) for every centre.

    `centers` (C, d) need not be normalized and must be finite (else a `UserError`);
    `block` is the side of the square blocks of the float32 pass (default per device
    type, `DEFAULT_BLOCK`). With a single class: NaN and -1.
    """
    device = torch.device(device)
    w = centers.detach().to(device="cpu", dtype=torch.float32)
    num = w.shape[0]
    if num < 2:
        return np.full(num, math.nan), np.full(num, -1, dtype=np.int64)
    if not bool(torch.isfinite(w).all()):
        raise UserError("the class centres (head weights) contain NaN or infinite values")
    block = block or DEFAULT_BLOCK.get(device.type, DEFAULT_BLOCK["cpu"])
    if block < 1:
        raise ValueError("block must be >= 1")
    rows, cols, crowded = _float32_candidates(w, block, device)
    best_cos, nearest = _best_per_row(rows, cols, _pair_cosines64(w, rows, cols), num)
    if crowded.size:
        best_cos[crowded], nearest[crowded] = exact_nearest(w, crowded)
    return best_cos, nearest
