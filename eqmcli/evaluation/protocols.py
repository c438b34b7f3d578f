"""Run the requested template/video/gallery benchmarks with one loaded model (`eqm eval`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from eqmcli.data.align import require_align
from eqmcli.errors import UserError
from eqmcli.evaluation.feature_cache import Embedder, FeatureCache, ModelSetup, file_checksum
from eqmcli.evaluation.ijb.files import IJB_SETS, read_ijb
from eqmcli.evaluation.ijb.protocol import IjbOptions, IjbResult, evaluate_ijb
from eqmcli.evaluation.megaface.files import MegafaceLists, read_megaface
from eqmcli.evaluation.megaface.protocol import (
    MEGAFACE_SIZES,
    MegafaceResult,
    PrecomputedFeatures,
    evaluate_megaface,
)
from eqmcli.evaluation.ytf.files import read_ytf
from eqmcli.evaluation.ytf.protocol import DEFAULT_FRAMES, YtfResult, evaluate_ytf

ProtocolResult = IjbResult | YtfResult | MegafaceResult
DEFAULT_FEATURE_SUFFIX = "_eqm.bin"


@dataclass
class ProtocolOptions:
    """Which of IJB-B, IJB-C, YouTube Faces and MegaFace to run, and their settings."""

    ijbb: bool = False
    ijbc: bool = False
    ytf: bool = False
    megaface: bool = False
    ijb: IjbOptions = field(default_factory=IjbOptions)
    ytf_frames: int = DEFAULT_FRAMES
    megaface_sizes: tuple[int, ...] = MEGAFACE_SIZES
    megaface_features: Path | None = None
    megaface_feature_suffix: str = DEFAULT_FEATURE_SUFFIX
    cache: bool = True

    @property
    def requested(self) -> bool:
        return self.ijbb or self.ijbc or self.ytf or self.megaface

    def check(self) -> None:
        """Refuse contradictory settings before any data is read."""
        if self.ytf_frames < 0:
            raise UserError("--ytf-frames must be 0 (every frame) or a positive count")
        if not self.megaface_sizes or any(s <= 0 for s in self.megaface_sizes):
            raise UserError("--megaface-sizes needs positive distractor counts, e.g. 10,100,1000")
        if self.megaface_features is not None and not self.megaface:
            raise UserError("--megaface-features only applies together with --megaface")
        if self.megaface_features is not None and not self.megaface_features.is_dir():
            raise UserError(f"--megaface-features folder not found: {self.megaface_features}")


def run_protocols(
    options: ProtocolOptions, model: ModelSetup, data_root: Path | None, cache_dir: Path | None
) -> list[ProtocolResult]:
    """Read every requested benchmark first (a missing file fails before any embedding),
    then evaluate each; results carry ``source`` and ``checkpoint``."""
    options.check()
    if options.ijbb or options.ijbc:
        require_align()  # before any reading or embedding
    readers = []
    for name in IJB_SETS:
        if getattr(options, name):
            meta = read_ijb(name, data_root)
            readers.append(lambda e, m=meta: evaluate_ijb(m, e, options.ijb))
    if options.ytf:
        pairs = read_ytf(data_root)
        readers.append(lambda e: evaluate_ytf(pairs, e, options.ytf_frames))
    if options.megaface:
        lists = read_megaface(data_root, options.megaface_sizes)
        readers.append(lambda e: _megaface(lists, e, options))
    cache = FeatureCache(cache_dir if options.cache else None)
    embedder = Embedder(model, model_id=file_checksum(model.checkpoint), cache=cache)
    return [replace(run(embedder), checkpoint=str(model.checkpoint)) for run in readers]


def _megaface(
    lists: MegafaceLists, embedder: Embedder, options: ProtocolOptions
) -> MegafaceResult:
    if options.megaface_features is None:
        return evaluate_megaface(lists, embedder)
    precomputed = PrecomputedFeatures(
        options.megaface_features, options.megaface_feature_suffix, embedder.cache
    )
    return evaluate_megaface(lists, precomputed=precomputed)
