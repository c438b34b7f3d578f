"""The core of `eqm eval`: locate verification benchmarks, run the protocol, write the results.

Benchmarks live under a data root (``--data-root``, else the recipe's ``eval.data_root``,
else ``$EQM_DATA_ROOT``) as InsightFace ``<name>.bin`` files or, for LFW, an aligned
``lfw/`` folder with the official ``pairs.txt``. Each result is written to
``<results folder>/<benchmark>.json`` (accuracies, TAR, FAR as fractions in [0, 1];
thresholds in cosine units), the folder named after the model (`results_folder`) so that
no checkpoint's results replace another's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from eqmcli.atomic import atomic_write_text, check_writable_folder, write_json
from eqmcli.devices import resolve_device
from eqmcli.errors import UserError, shown
from eqmcli.evaluation import pair_sets as readers
from eqmcli.evaluation.feature_cache import ModelSetup, file_checksum
from eqmcli.evaluation.pair_outcomes import write_failures, write_pair_scores
from eqmcli.evaluation.pair_sets import (
    VerificationSet,
    synthetic_verification_set,
)
from eqmcli.evaluation.protocols import ProtocolOptions, ProtocolResult, run_protocols
from eqmcli.evaluation.verification import SetEvaluation, evaluate_set
from eqmcli.interop.models import (
    assumed_preprocessing_note,
    has_recipe,
    load_model,
    model_preprocessing,
    recipe_preprocessing,
)
from eqmcli.run.recipe import Recipe, load_recipe
from eqmcli.run.rundir import CHECKPOINT_DIR, RunPaths, Trained, checkpoint_folder

BENCHMARK_NAMES: tuple[str, ...] = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
DATA_ROOT_ENV = "EQM_DATA_ROOT"


@dataclass
class BenchmarkSource:
    """Where one verification set comes from; `load()` reads it (images decoded lazily)."""

    name: str
    description: str
    loader: Callable[[], VerificationSet]

    def load(self) -> VerificationSet:
        return self.loader()


@dataclass
class EvalReport:
    """What `run_evaluation` did: one typed result per benchmark and the files written."""

    results: list[SetEvaluation]
    written: list[Path] = field(default_factory=list)
    protocol_results: list[ProtocolResult] = field(default_factory=list)
    run_dir: Path | None = None
    checkpoint: Path | None = None
    resized_from: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    results_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """One sentence per result whose statistics the data cannot support."""
        return [f"{r.benchmark}: {r.result.warning}" for r in self.results if r.result.warning]

    def to_json(self) -> dict[str, Any]:
        """``{benchmark: result}``: the same dicts as the ``eval/<benchmark>.json`` files."""
        found = {r.benchmark: r.to_dict() for r in self.results}
        found.update({r.benchmark: r.to_dict() for r in self.protocol_results})
        return found


def resolve_data_root(given: str | Path | None, recipe: Recipe | None = None) -> Path | None:
    """``--data-root``, else the recipe's ``eval.data_root``, else ``$EQM_DATA_ROOT``, else None."""
    if given is not None:
        return Path(given).expanduser()
    if recipe is not None and recipe.eval.data_root is not None:
        return Path(recipe.eval.data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else None


def find_benchmark(name: str, data_root: Path | None, missing: str = "error") -> BenchmarkSource:
    """Locate a published benchmark under ``data_root``; a missing one names every path tried.
    ``missing``: what to do with pairs of an LFW folder naming a missing image."""
    if name not in BENCHMARK_NAMES:
        raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")
    if data_root is None:
        raise UserError(
            f"no data root to find benchmark '{name}' in: pass --data-root DIR, set "
            f"eval.data_root in the recipe, or set {DATA_ROOT_ENV}"
        )
    bin_path = data_root / f"{name}.bin"
    looked = [str(bin_path)]
    if bin_path.is_file():
        return BenchmarkSource(name, str(bin_path), lambda: readers.read_bin(bin_path, name=name))
    if name == "lfw":
        folder = data_root / "lfw"
        for pairs in (data_root / "pairs.txt", folder / "pairs.txt"):
            if folder.is_dir() and pairs.is_file():
                return BenchmarkSource(
                    name,
                    f"{folder} + {pairs}",
                    lambda p=pairs: readers.read_lfw(folder, p, name=name, missing=missing),
                )
        looked.append(f"{folder}/ with {data_root / 'pairs.txt'} or {folder / 'pairs.txt'}")
    where = "" if data_root.is_dir() else f" (the folder {data_root} does not exist)"
    raise UserError(
        f"benchmark '{name}' not found under {data_root}{where}: looked for " + " and ".join(looked)
    )


def pairs_source(
    pairs_file: str | Path, images_root: str | Path | None, missing: str = "error"
) -> BenchmarkSource:
    """The user's own pairs: a pairs file (``path_a path_b label`` or LFW ``pairs.txt``
    format) or an InsightFace ``.bin`` (what ``eqm data make-bin`` writes); ``missing``:
    what to do with pairs naming a missing image file."""
    path = Path(pairs_file)
    if not path.is_file():
        raise UserError(f"pairs file not found: {path}")
    if path.suffix.lower() == ".bin":
        if images_root is not None:
            raise UserError(f"--images-root does not apply to {path}: a .bin holds its images")
        return BenchmarkSource(path.stem, str(path), lambda: readers.read_bin(path, name=path.stem))
    return BenchmarkSource(
        path.stem, str(path),
        lambda: readers.read_pairs(path, images_root, name=path.stem, missing=missing),
    )


def _synthetic_source(recipe: Recipe) -> BenchmarkSource:
    train = recipe.data.train
    if train.kind != "synthetic":
        raise UserError(
            f"eval.sets asks for 'synthetic' but data.train is '{train.kind}'; "
            "name a benchmark, a pairs file or a .bin file in eval.sets instead"
        )
    return BenchmarkSource(
        "synthetic", "held-out synthetic identities", lambda: synthetic_verification_set(train)
    )


def file_source(entry: str, data_root: Path | None) -> BenchmarkSource:
    """An ``eval.sets`` entry naming a file: an InsightFace ``.bin`` or a pairs file.

    A relative path is looked up under ``data_root`` first, then the current folder; a
    pairs file's own relative image paths are taken from its folder.
    """
    path = Path(entry).expanduser()
    if not path.is_absolute() and data_root is not None and (data_root / path).is_file():
        path = data_root / path
    if not path.is_file():
        raise UserError(
            f"eval.sets entry {shown(entry)} is neither a built-in set (synthetic, "
            f"{', '.join(BENCHMARK_NAMES)}) nor an existing pairs file or .bin file"
        )
    path = path.resolve()
    return pairs_source(path, None)


def recipe_sources(recipe: Recipe, data_root: Path | None) -> list[BenchmarkSource]:
    """The recipe's own ``eval.sets``: 'synthetic' (its held-out synthetic identities), a
    built-in benchmark name, or the path of a pairs file or ``.bin`` file."""
    sources = []
    for entry in recipe.eval.sets:
        if entry == "synthetic":
            sources.append(_synthetic_source(recipe))
        elif entry in BENCHMARK_NAMES:
            sources.append(find_benchmark(entry, data_root))
        else:
            sources.append(file_source(entry, data_root))
    if not sources:
        raise UserError(
            "the recipe's eval.sets is empty: name a benchmark (--lfw, ...) or --pairs FILE"
        )
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(
            f"eval.sets names two sets called {shown(repeated[0])}: each set's results go "
            "to eval/<name>.json, so the names must differ"
        )
    return sources


def load_training_sets(recipe: Recipe) -> list[VerificationSet]:
    """The recipe's ``eval.sets`` loaded for verification during training.

    Loaded once before training starts, so a missing file fails early. A set holding only
    matched or only mismatched pairs is refused: its accuracy cannot pick ``best.pt``.
    """
    sets = [source.load() for source in recipe_sources(recipe, resolve_data_root(None, recipe))]
    for vset in sets:
        if vset.issame.all() or not vset.issame.any():
            only = "matched" if vset.issame.all() else "mismatched"
            raise UserError(
                f"eval.sets: every pair of set {shown(vset.name)} is {only}; verification during "
                "training needs both matched and mismatched pairs"
            )
    return sets


def save_result(folder: Path, result: SetEvaluation) -> list[Path]:
    """Write ``<folder>/<benchmark>.json`` (the JSON edge of a `SetEvaluation`) and, when the
    result carries its per-pair scores, ``<benchmark>.pairs.npz`` and the pairs it got
    wrong with their images, ``<benchmark>.failures.csv`` (`write_failures`). Returns the
    JSON's path, then the failures list's (when written)."""
    failures = None
    if result.scores is not None and result.issame is not None:
        write_pair_scores(folder, result.benchmark, result.scores, result.issame,
                          result.result.folds, fingerprint=result.pairs_fingerprint,
                          fold_of=result.fold_of)
        failures = write_failures(folder, result)
    if result.missing is not None:
        listing = "".join(f"{name}\n" for name in result.missing.images)
        atomic_write_text(folder / f"{result.benchmark}_missing.txt", listing)
    written = write_json(folder / f"{result.benchmark}.json", result.to_dict())
    return [written] if failures is None else [written, failures]


def write_result(run_dir: Path, result: SetEvaluation) -> Path:
    """`save_result` into ``<run_dir>/eval/`` (training's final verification of last.pt),
    recording the preprocessing of the run's ``recipe.yaml`` when the result names none.
    (No checksum: training verifies before it saves the checkpoint.)"""
    paths = RunPaths(run_dir)
    if result.preprocessing is None and paths.recipe.is_file():
        recipe = load_recipe(paths.recipe)
        result = replace(result, preprocessing=recipe_preprocessing(recipe).to_dict())
    return save_result(paths.eval_dir, result)[0]


def results_folder(trained: Trained, out: str | Path | None = None) -> Path:
    """Where `eqm eval` writes: ``out`` (``--out``) when given; for a run's
    ``checkpoints/last.pt`` its ``eval/``; for another checkpoint of a run
    ``eval/<checkpoint name>/`` (``best.pt`` -> ``eval/best/``); for any other model file
    a folder beside it named after the whole file name (``model.onnx`` ->
    ``model.onnx.eval/``, so ``model.pt`` and ``model.onnx`` never share one)."""
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file, not a folder for the results")
        return folder
    checkpoint = trained.checkpoint_path
    if checkpoint.parent.name == CHECKPOINT_DIR:
        return checkpoint_folder(RunPaths(trained.run_dir).eval_dir, checkpoint.name)
    return checkpoint.with_name(f"{checkpoint.name}.eval")


def run_evaluation(
    target: str | Path,
    *,
    benchmarks: list[str] | None = None,
    pairs_file: str | Path | None = None,
    images_root: str | Path | None = None,
    data_root: str | Path | None = None,
    flip: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = True,
    write: bool = True,
    protocols: ProtocolOptions | None = None,
    out: str | Path | None = None,
    missing: str = "error",
    mean: str | None = None,
    std: str | None = None,
    bgr: bool | None = None,
) -> EvalReport:
    """Evaluate a run directory (its ``checkpoints/last.pt``), a checkpoint or ONNX file.

    With no ``benchmarks`` and no ``pairs_file`` the recipe's own ``eval.sets`` are used.
    Every benchmark is located before any embedding work starts, so a missing file fails
    fast. Results are written to `results_folder` (``out`` when given) when ``write``;
    each records the model file, its SHA-256 and the preprocessing applied.
    ``protocols`` adds IJB-B/C, YouTube Faces and MegaFace (`eqmcli.evaluation.protocols`);
    ``mean``/``std``/``bgr`` set an ONNX model's preprocessing; ``missing`` says what to do
    with pairs that name a missing image (`MISSING_POLICIES`: refuse the set, skip them or
    count them as failures; listed in ``<set>_missing.txt``).
    """
    if images_root is not None and pairs_file is None:
        raise UserError("--images-root only applies together with --pairs FILE")
    resolved = device if not isinstance(device, str) else resolve_device(device)
    trained = load_model(target, resolved, mean=mean, std=std, bgr=bgr)
    folder = results_folder(trained, out)
    if write:  # a read-only run folder is said before the embedding work, not after it
        check_writable_folder(folder, "the results folder", "; pass --out DIR for another one")
    root = resolve_data_root(data_root, trained.recipe)
    readers.check_missing_policy(missing)
    sources = [find_benchmark(name, root, missing) for name in benchmarks or []]
    if pairs_file is not None:
        sources.append(pairs_source(pairs_file, images_root, missing))
    protocols = protocols or ProtocolOptions()
    if not sources and not protocols.requested:
        if not has_recipe(trained):
            raise UserError(
                f"{target} names no verification set (an ONNX model from elsewhere carries no "
                "recipe): pass --pairs FILE (a pairs file or .bin), or a benchmark such as "
                "--lfw with --data-root DIR"
            )
        sources = recipe_sources(trained.recipe, root)
    provenance = {
        "checkpoint": str(trained.checkpoint_path),
        "checkpoint_sha256": file_checksum(trained.checkpoint_path),
        "preprocessing": model_preprocessing(trained).to_dict(),
        "epoch": trained.epoch,
        "step": trained.step,
    }
    note = assumed_preprocessing_note(trained)
    report = EvalReport(
        results=[],
        run_dir=trained.run_dir,
        checkpoint=trained.checkpoint_path,
        input_size=trained.input_size,
        results_dir=folder,
        notes=[note] if note else [],
    )
    for source in sources:
        evaluation = evaluate_set(
            trained.backbone,
            source.load(),
            device=resolved,
            input_size=trained.input_size,
            flip=flip,
            batch_size=batch_size or trained.recipe.eval.batch_size,
            precision=precision,
            progress=progress,
        )
        evaluation = replace(
            evaluation, benchmark=source.name, source=source.description, **provenance
        )
        if evaluation.resized_from and report.resized_from is None:
            report.resized_from = evaluation.resized_from
        if evaluation.missing is not None:
            report.notes.append(_missing_note(evaluation))
        report.results.append(evaluation)
        if write:
            report.written.extend(save_result(folder, evaluation))
    if protocols.requested:
        model = ModelSetup(
            trained.backbone, trained.checkpoint_path, trained.input_size, resolved, flip,
            batch_size or trained.recipe.eval.batch_size, precision, progress,
        )
        _run_protocols(report, provenance, protocols, root, model, folder if write else None)
    return report


def _missing_note(evaluation: SetEvaluation) -> str:
    """One line on the pairs of a set that name a missing image, and what became of them."""
    gone = evaluation.missing
    done = "skipped" if gone.policy == "skip" else "counted as failures"
    return (f"{evaluation.benchmark}: {gone.pairs} pair(s) name one of {len(gone.images)} "
            f"missing image(s) ({evaluation.benchmark}_missing.txt): {done}")


def _run_protocols(
    report: EvalReport,
    provenance: dict[str, Any],
    options: ProtocolOptions,
    root: Path | None,
    model: ModelSetup,
    folder: Path | None,
) -> None:
    """IJB / YTF / MegaFace results into ``report`` and, unless ``folder`` is None, into
    ``folder`` (the JSON, and the listed images that were missing as
    ``<benchmark>_missing.txt``; the feature cache in ``folder/cache/``)."""
    cache_dir = None if folder is None else folder / "cache"
    for result in run_protocols(options, model, root, cache_dir):
        result = replace(result, **provenance)
        if result.resized_from and report.resized_from is None:
            report.resized_from = result.resized_from
        report.protocol_results.append(result)
        if folder is None:
            continue
        report.written.append(write_json(folder / f"{result.benchmark}.json", result.to_dict()))
        if result.missing:
            listing = folder / f"{result.benchmark}_missing.txt"
            text = "".join(f"{name}\n" for name in result.missing)
            report.written.append(atomic_write_text(listing, text))
