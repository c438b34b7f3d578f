"""Embedding for the large benchmarks, with a feature cache under ``RUN/eval/cache/``.

`Embedder.features` runs `eqmcli.evaluation.features.extract_embeddings` (batched, progress
bar, flip fusion) over a data set, unless a cached result exists for the same model file, images and
preprocessing. The cache key hashes: the model file's SHA-256, the benchmark name, the
identity of every image file in order (its resolved absolute path, size in bytes and
modification time in ns: another data root, or an image replaced in place, is another
key), the model input size, the extraction precision, flip on/off, raw or L2-normalized
features and any protocol-specific settings (alignment template, landmarks). Files are
``RUN/eval/cache/<benchmark>-<key>.npy`` (float32 (N, d)), written through a temporary
sibling, so a second `eqm eval` reads them instead of embedding again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from eqmcli.atomic import atomic_write
from eqmcli.evaluation.checksums import sha256_file
from eqmcli.evaluation.features import extract_embeddings

_CHECKSUMS: dict[tuple[str, int, int], str] = {}


def file_checksum(path: Path) -> str:
    """SHA-256 of a file (hex), remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKSUMS:
        _CHECKSUMS[key] = sha256_file(path)
    return _CHECKSUMS[key]


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (lists of names, sizes, flags)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def files_fingerprint(paths: Sequence[Path]) -> str:
    """A short hash of the identity of each file in order: resolved absolute path, size
    (bytes) and modification time (ns); a file that is absent counts as such."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = path.stat()
            identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:
            identity = f"{Path(path).absolute()}\0absent"
        digest.update(identity.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:20]


def array_fingerprint(array: np.ndarray) -> str:
    """A short hash of an array's dtype, shape and bytes (e.g. landmarks)."""
    data = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{data.dtype}{data.shape}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()[:20]


@dataclass
class FeatureCache:
    """``.npy`` feature files in ``folder`` (None: caching off)."""

    folder: Path | None

    def path(self, benchmark: str, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{benchmark}-{key}.npy"

    def load(self, benchmark: str, key: str) -> np.ndarray | None:
        path = self.path(benchmark, key)
        if path is None or not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged cache file is recomputed, never trusted

    def save(self, benchmark: str, key: str, features: np.ndarray) -> None:
        path = self.path(benchmark, key)
        if path is None:
            return
        data = np.ascontiguousarray(features, dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda stream: np.save(stream, data, allow_pickle=False), sync=False)


@dataclass
class ModelSetup:
    """The loaded model and how to run it (from `eqm eval`'s options)."""

    backbone: nn.Module
    checkpoint: Path
    input_size: tuple[int, int]
    device: str | torch.device
    flip: bool
    batch_size: int
    precision: str
    progress: bool


@dataclass
class Embedder:
    """A model ready to embed benchmark images (see `features`); ``model_id`` (the model
    file's checksum) keys the cache."""

    model: ModelSetup
    model_id: str
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(None))
    resized_from: tuple[int, int] | None = None
    cached_sets: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size

    @property
    def flip(self) -> bool:
        return self.model.flip

    def features(
        self,
        benchmark: str,
        images: Dataset,
        files: Sequence[Path],
        *,
        raw: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """float32 (N, d) features of ``images`` (flip-fused when ``flip``): L2-normalized,
        or the raw network outputs when ``raw`` (their norm kept). ``files`` are the image
        files ``images`` reads, in order (their identity keys the cache), ``settings`` any
        other preprocessing."""
        key = fingerprint(
            self.model_id, benchmark, files_fingerprint(files), list(self.input_size),
            self.model.precision, self.flip, raw, settings or {},
        )
        found = self.cache.load(benchmark, key)
        if found is not None and found.shape[0] == len(files):
            self.cached_sets.append(benchmark)
            return found
        model = self.model
        emb = extract_embeddings(
            model.backbone,
            images,
            batch_size=model.batch_size,
            device=model.device,
            input_size=model.input_size,
            flip=model.flip,
            precision=model.precision,
            progress=model.progress,
            description=f"embedding {benchmark}",
            **({"normalize": False} if raw else {}),
        )
        if emb.resized_from and self.resized_from is None:
            self.resized_from = emb.resized_from
        chosen = emb.flip if self.flip and emb.flip is not None else emb.plain
        features = chosen.numpy().astype(np.float32, copy=False)
        self.cache.save(benchmark, key, features)
        return features
