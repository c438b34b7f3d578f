"""One loader for every kind of model a command accepts: run, checkpoint, ``.onnx`` file."""

from __future__ import annotations

from pathlib import Path

import torch

from eqmcli.errors import UserError
from eqmcli.interop.onnx import RECIPE_KEY, InputPreprocessing, OnnxBackbone, load_onnx
from eqmcli.run.recipe import Recipe
from eqmcli.run.rundir import Trained, load_trained


def load_model(
    target: str | Path, device: str | torch.device = "cpu", *, mean: str | None = None,
    std: str | None = None, bgr: bool | None = None,
) -> Trained:
    """A run directory (its ``checkpoints/last.pt``), a checkpoint file, or an ``.onnx`` file
    (run by onnxruntime on the CPU; its outputs are moved to ``device``), in eval mode.
    ``mean``/``std``/``bgr`` (``--mean/--std/--bgr``) set an ONNX model's preprocessing; a
    run's is its recipe's, so they are refused there."""
    path = Path(target)
    if path.suffix.lower() == ".onnx":
        return load_onnx(path, mean=mean, std=std, bgr=bgr)
    if mean is not None or std is not None or bgr is not None:
        raise UserError(
            "--mean, --std and --bgr apply to .onnx models only: a run or checkpoint is "
            "fed as its recipe's model.preprocessing says"
        )
    return load_trained(path, device=device)


def model_preprocessing(trained: Trained) -> InputPreprocessing:
    """How the model's images are normalized: an ONNX model's own, else the recipe's."""
    if isinstance(trained.backbone, OnnxBackbone):
        return trained.backbone.preprocessing
    return recipe_preprocessing(trained.recipe)


def recipe_preprocessing(recipe: Recipe) -> InputPreprocessing:
    """A run's preprocessing: its recipe's ``model.preprocessing``."""
    pre = recipe.model.preprocessing
    return InputPreprocessing((pre.mean,) * 3, (pre.std,) * 3, pre.color_order.upper(), "recipe")


def assumed_preprocessing_note(trained: Trained) -> str | None:
    """One line for an ONNX model whose preprocessing nobody stated (no metadata, no flags)."""
    pre = model_preprocessing(trained)
    if pre.source != "assumed":
        return None
    return (f"{trained.checkpoint_path} records no preprocessing: assumed {pre.describe()} "
            "(pass --mean, --std, --bgr if it expects another)")



def has_recipe(trained: Trained) -> bool:
    """False for an ONNX model from elsewhere (no ``eqm.recipe`` metadata): its recipe is a
    stand-in that names no verification sets."""
    backbone = trained.backbone
    return not isinstance(backbone, OnnxBackbone) or RECIPE_KEY in backbone.metadata
