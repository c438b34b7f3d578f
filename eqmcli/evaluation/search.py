"""Gallery search (1:N identification): chunked top-k, CMC and open-set TPIR at FPIR.

Definitions (Grother et al., NIST FRVT Part 2 / NISTIR 8238; Maze et al., "IARPA Janus
Benchmark-C", ICB 2018), with scores as cosine similarities and a candidate returned when
its score is at least the threshold:

- a *mated* search is a probe whose subject has a template in the gallery; its rank is
  1 + the number of non-mate gallery entries scoring strictly higher than its best mate.
- CMC at rank k: the fraction of mated searches with rank <= k (closed set).
- FPIR(t): the fraction of *non-mated* searches whose top score is >= t.
- TPIR(t): the fraction of mated searches whose mate is at rank 1 with a score >= t
  (1 - FNIR at rank 1). TPIR at FPIR f uses the lowest threshold with FPIR <= f.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eqmcli.evaluation.verification import far_key

#: Probes searched per chunk (one (chunk, gallery) float32 block at a time).
PROBE_CHUNK = 4096
CMC_RANKS: tuple[int, ...] = (1, 5, 10)
FPIR_TARGETS: tuple[float, ...] = (1e-2, 1e-1)


def top_k(
    probes: np.ndarray, gallery: np.ndarray, k: int, chunk: int = PROBE_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest cosine scores of each probe (P, d) against ``gallery`` (G, d), both
    L2-normalized: (scores float32 (P, k), gallery indices int64 (P, k)), best first."""
    k = min(k, gallery.shape[0])
    table = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    queries = torch.from_numpy(np.ascontiguousarray(probes, dtype=np.float32))
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    index = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk] @ table.T
        best = torch.topk(block, k, dim=1)
        scores[start : start + chunk] = best.values.numpy()
        index[start : start + chunk] = best.indices.numpy()
    return scores, index


@dataclass
class IdentificationResult:
    """1:N identification on one gallery: fractions in [0, 1]; None where undefined."""

    gallery: str
    gallery_templates: int
    mated: int
    non_mated: int
    cmc: dict[str, float | None]
    tpir_at_fpir: dict[str, float | None]
    tpir_thresholds: dict[str, float | None]


def mate_ranks_and_top_scores(
    probes: np.ndarray,
    probe_subjects: np.ndarray,
    gallery: np.ndarray,
    gallery_subjects: np.ndarray,
    chunk: int = PROBE_CHUNK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: its mate's rank (0 when non-mated), its best mate score (NaN when
    non-mated) and its top score over the whole gallery. Chunked over probes."""
    table = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    queries = torch.from_numpy(np.ascontiguousarray(probes, dtype=np.float32))
    gallery_subjects = np.asarray(gallery_subjects)
    ranks = np.zeros(len(probes), dtype=np.int64)
    mate_scores = np.full(len(probes), np.nan, dtype=np.float32)
    top = np.empty(len(probes), dtype=np.float32)
    for start in range(0, len(probes), chunk):
        block = (queries[start : start + chunk] @ table.T).numpy()
        top[start : start + len(block)] = block.max(axis=1)
        is_mate = probe_subjects[start : start + len(block), None] == gallery_subjects[None, :]
        mated = is_mate.any(axis=1)
        best_mate = np.where(is_mate, block, -np.inf).max(axis=1)
        higher = ((block > best_mate[:, None]) & ~is_mate).sum(axis=1)
        ranks[start : start + len(block)] = np.where(mated, higher + 1, 0)
        mate_scores[start : start + len(block)] = np.where(mated, best_mate, np.nan)
    return ranks, mate_scores, top


def identification(
    gallery_name: str,
    probes: np.ndarray,
    probe_subjects: np.ndarray,
    gallery: np.ndarray,
    gallery_subjects: np.ndarray,
) -> IdentificationResult:
    """CMC at ranks 1/5/10 and TPIR at FPIR 1e-2/1e-1 for one gallery (see the module doc)."""
    ranks, mate_scores, top = mate_ranks_and_top_scores(
        probes, np.asarray(probe_subjects), gallery, gallery_subjects
    )
    mated = ranks > 0
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    cmc = {
        str(r): (float(np.mean(ranks[mated] <= r)) if n_mated else None) for r in CMC_RANKS
    }
    tpir: dict[str, float | None] = {far_key(f): None for f in FPIR_TARGETS}
    cuts: dict[str, float | None] = {far_key(f): None for f in FPIR_TARGETS}
    non_mated_top = np.sort(top[~mated])[::-1]
    for target in FPIR_TARGETS:
        allowed = int(np.floor(target * n_non + 1e-9))
        if not n_mated or n_non * target < 1.0 - 1e-9:
            continue  # no non-mated search, or too few to measure this FPIR
        # the lowest threshold admitting at most `allowed` non-mated top scores
        bar = non_mated_top[allowed] if allowed < n_non else -np.inf
        hit = (ranks == 1) & (mate_scores > bar)
        tpir[far_key(target)] = float(hit.sum() / n_mated)
        cuts[far_key(target)] = float(bar) if np.isfinite(bar) else None
    return IdentificationResult(
        gallery=gallery_name,
        gallery_templates=int(len(gallery)),
        mated=n_mated,
        non_mated=n_non,
        cmc=cmc,
        tpir_at_fpir=tpir,
        tpir_thresholds=cuts,
    )
