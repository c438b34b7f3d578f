"""IJB-B / IJB-C template features and template-pair scores, chunked for IJB-C's size.

A template is a set of images and video frames of one subject; each image belongs to one
*media* (a still photo, or one video). As in InsightFace's IJB evaluation
(``recognition/_evaluation_/ijb/ijb_11.py``) and Xie & Zisserman's protocol it follows:

1. image features (optionally multiplied by the detector's face score, optionally left
   unnormalized so their norm acts as a quality weight) are averaged within each media;
2. the media averages of a template are summed;
3. the sum is L2-normalized; template pairs are scored by cosine similarity.

Sums run in float32 with torch's ``index_add_`` (no Python loop over templates) and
pairs are scored from blocks of the template Gram matrix, so IJB-C (469k images, 23k
templates, 15.7M pairs) takes seconds and well under 2 GB; `eqm bench protocols`
measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from eqmcli.errors import UserError

#: Template pairs scored per chunk: two gathered (chunk, d) float32 blocks small enough to
#: stay in the CPU cache (2,048 x 512 x 4 B = 4 MiB each); larger chunks measured slower.
PAIR_CHUNK = 1 << 11
#: ``auto`` scores through the Gram matrix when pairs * GRAM_DENSITY >= templates^2.
GRAM_DENSITY = 64
#: Template rows per Gram block (a (block, templates) float32 product: 95 MiB for IJB-C).
GRAM_BLOCK = 1024
#: Images summed per chunk when building media features.
IMAGE_CHUNK = 1 << 16


@dataclass
class TemplateFeatures:
    """L2-normalized template features: row k of ``features`` (T, d) float32 is template
    ``ids[k]`` (sorted ascending); ``media`` and ``images`` count what went into each."""

    ids: np.ndarray
    features: np.ndarray
    media: np.ndarray
    images: np.ndarray

    def rows(self, template_ids: np.ndarray) -> np.ndarray:
        """The row of each template id; an id with no feature is a `UserError`."""
        wanted = np.asarray(template_ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, wanted)
        rows = np.clip(rows, 0, max(len(self.ids) - 1, 0))
        unknown = self.ids[rows] != wanted if len(self.ids) else np.ones(wanted.shape, bool)
        if np.any(unknown):
            first = int(wanted[np.argmax(unknown)])
            raise UserError(
                f"{int(unknown.sum()):,} template ids have no image (first: {first}); the "
                "pair list and the template/media list disagree"
            )
        return rows


def _group_sum(values: torch.Tensor, groups: np.ndarray, count: int) -> torch.Tensor:
    """Row sums of ``values`` (N, d) per group index (N,) into a (count, d) float32 tensor."""
    out = torch.zeros((count, values.shape[1]), dtype=torch.float32)
    index = torch.as_tensor(groups, dtype=torch.int64)
    for start in range(0, values.shape[0], IMAGE_CHUNK):
        stop = start + IMAGE_CHUNK
        out.index_add_(0, index[start:stop], values[start:stop].float())
    return out


def template_features(
    features: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    weights: np.ndarray | None = None,
) -> TemplateFeatures:
    """Aggregate image ``features`` (N, d) into template features (see the module docstring).

    ``templates`` and ``medias`` (N,) are the integer template and media id of each image;
    ``weights`` (N,) multiply the image features first (the detector score), when given.
    """
    n = features.shape[0]
    templates = np.asarray(templates, dtype=np.int64)
    medias = np.asarray(medias, dtype=np.int64)
    if templates.shape != (n,) or medias.shape != (n,):
        raise ValueError("templates and medias need one id per image")
    values = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if weights is not None:
        values = values * torch.as_tensor(np.asarray(weights, dtype=np.float32)).unsqueeze(1)
    media_keys, media_of_image, media_counts = np.unique(
        np.stack((templates, medias), axis=1), axis=0, return_inverse=True, return_counts=True
    )
    media_of_image = media_of_image.reshape(-1)
    media_mean = _group_sum(values, media_of_image, len(media_keys))
    media_mean /= torch.as_tensor(media_counts, dtype=torch.float32).unsqueeze(1)
    ids, template_of_media, media_per_template = np.unique(
        media_keys[:, 0], return_inverse=True, return_counts=True
    )
    summed = _group_sum(media_mean, template_of_media.reshape(-1), len(ids))
    images = np.bincount(template_of_media.reshape(-1), weights=media_counts, minlength=len(ids))
    return TemplateFeatures(
        ids=ids,
        features=F.normalize(summed, dim=1).numpy(),
        media=media_per_template.astype(np.int64),
        images=images.astype(np.int64),
    )


def score_pairs(
    feats: TemplateFeatures,
    first: np.ndarray,
    second: np.ndarray,
    *,
    method: str = "auto",
    chunk: int = PAIR_CHUNK,
) -> np.ndarray:
    """Cosine similarity of each template pair (``first[k]``, ``second[k]``): float32 (P,).

    ``method``: ``gram`` computes blocks of the template Gram matrix with a matrix product
    and picks the pairs out (fast when pairs are dense among the templates, as in IJB:
    15.7M pairs of 23k templates), ``gather`` multiplies each pair's two rows (for few
    pairs among many templates); ``auto`` picks gram when pairs >= templates^2 / 64.
    """
    rows_a, rows_b = feats.rows(first), feats.rows(second)
    count = len(feats.ids)
    if method == "auto":
        method = "gram" if len(rows_a) * GRAM_DENSITY >= count * count else "gather"
    if method == "gram":
        return _gram_scores(feats.features, rows_a, rows_b)
    return _gathered_scores(feats.features, rows_a, rows_b, chunk)


def _gathered_scores(
    features: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, chunk: int
) -> np.ndarray:
    """Row-pair dot products, a cache-sized chunk of pairs at a time."""
    a_index, b_index = torch.as_tensor(rows_a), torch.as_tensor(rows_b)
    table = torch.from_numpy(features)
    scores = torch.empty(len(a_index), dtype=torch.float32)
    for start in range(0, len(a_index), chunk):
        stop = start + chunk
        a = table.index_select(0, a_index[start:stop])
        b = table.index_select(0, b_index[start:stop])
        torch.sum(a * b, dim=1, out=scores[start:stop])
    return scores.numpy()


def _gram_scores(features: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Pairs ordered by their lower row; for each block of GRAM_BLOCK rows one product
    ``block @ features[block start:].T`` (the upper triangle only) holds its pairs' scores."""
    low, high = np.minimum(rows_a, rows_b), np.maximum(rows_a, rows_b)
    order = np.argsort(low, kind="stable")
    low, high = low[order], high[order]
    table = torch.from_numpy(features)
    bounds = np.searchsorted(low, np.arange(0, len(features) + GRAM_BLOCK, GRAM_BLOCK))
    scores = np.empty(len(order), dtype=np.float32)
    for block, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if hi > lo:
            start = block * GRAM_BLOCK
            gram = (table[start : start + GRAM_BLOCK] @ table[start:].T).numpy()
            scores[order[lo:hi]] = gram[low[lo:hi] - start, high[lo:hi] - start]
    return scores
