"""YouTube Faces video verification: 10-fold accuracy where the folds are the official splits.

A video's descriptor is the mean of its L2-normalized (flip-fused) frame embeddings over at
most ``frames`` evenly spaced frames, L2-normalized; a pair's score is the cosine of its
two descriptors. Accuracy follows `eqmcli.evaluation.verification.verify` with fold k =
split k: each split's threshold is learned on the other nine. A video named in ``splits.txt`` whose
folder is absent or empty is listed, and its pairs are left out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqmcli.atomic import json_safe
from eqmcli.data.decode import ImageFiles
from eqmcli.errors import UserError
from eqmcli.evaluation.feature_cache import Embedder
from eqmcli.evaluation.verification import Provenance, VerificationResult, verify
from eqmcli.evaluation.ytf.files import YtfPairs, evenly_spaced, video_frames

#: Frames per video by default: enough for a stable mean at a fraction of all 621k frames.
DEFAULT_FRAMES = 100


@dataclass
class YtfResult(Provenance):
    """YouTube Faces results; ``result`` holds the 10-fold numbers (fractions in [0, 1])."""

    result: VerificationResult
    videos: int
    frames: int
    frames_per_video: int
    missing: list[str]
    pairs_dropped: int
    flip: bool
    input_size: tuple[int, int]
    resized_from: tuple[int, int] | None
    seconds: float
    benchmark: str = "ytf"

    def to_dict(self) -> dict[str, Any]:
        """The ``eval/ytf.json`` layout: the `VerificationResult` keys plus these fields."""
        out: dict[str, Any] = {"benchmark": self.benchmark, "flip": self.flip}
        out.update(self.result.to_dict())
        out.update(
            videos=self.videos,
            frames=self.frames,
            frames_per_video=self.frames_per_video,
            missing_videos=len(self.missing),
            pairs_dropped=self.pairs_dropped,
            input_size=list(self.input_size),
            resized_from=list(self.resized_from) if self.resized_from else None,
            seconds=round(self.seconds, 3),
        )
        out.update(self.provenance())
        return json_safe(out)


def video_descriptors(
    features: np.ndarray, frames_per_video: list[int]
) -> np.ndarray:
    """Mean of each video's consecutive rows of ``features``, L2-normalized: (V, d)."""
    starts = np.concatenate(([0], np.cumsum(frames_per_video)[:-1])).astype(np.int64)
    means = np.add.reduceat(features.astype(np.float64), starts, axis=0)
    means /= np.asarray(frames_per_video, dtype=np.float64)[:, None]
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def evaluate_ytf(pairs: YtfPairs, embedder: Embedder, frames: int = DEFAULT_FRAMES) -> YtfResult:
    """Embed the sampled frames of every video in ``pairs`` and verify the video pairs."""
    started = time.perf_counter()
    videos = sorted(set(pairs.first) | set(pairs.second))
    chosen: dict[str, list[str]] = {}
    for video in videos:
        listed = video_frames(pairs.frames_root / video)
        if listed:
            chosen[video] = [str(listed[i]) for i in evenly_spaced(len(listed), frames)]
    missing = [v for v in videos if v not in chosen]
    present = sorted(chosen)
    if not present:
        raise UserError(
            f"none of the {len(videos):,} videos named in {pairs.splits_file} has frames under "
            f"{pairs.frames_root}"
        )
    paths = [p for v in present for p in chosen[v]]
    feats = embedder.features(
        "ytf", ImageFiles(paths), [Path(p) for p in paths], settings={"frames": frames}
    )
    descriptors = video_descriptors(feats, [len(chosen[v]) for v in present])
    row = {v: i for i, v in enumerate(present)}
    both = list(zip(pairs.first, pairs.second, strict=True))
    keep = np.asarray([first in row and second in row for first, second in both], dtype=bool)
    first_rows = [row[first] for (first, _), k in zip(both, keep, strict=True) if k]
    second_rows = [row[second] for (_, second), k in zip(both, keep, strict=True) if k]
    scores = np.sum(descriptors[first_rows] * descriptors[second_rows], axis=1)
    result = verify(scores, pairs.same[keep], fold_of=pairs.split[keep])
    return YtfResult(
        result=result,
        videos=len(present),
        frames=len(paths),
        frames_per_video=frames,
        missing=missing,
        pairs_dropped=int((~keep).sum()),
        flip=embedder.flip,
        input_size=tuple(embedder.input_size),  # type: ignore[arg-type]
        resized_from=embedder.resized_from,
        seconds=time.perf_counter() - started,
        source=str(pairs.splits_file),
    )
