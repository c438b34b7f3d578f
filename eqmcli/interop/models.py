"""One loader for every kind of model a command accepts: run, checkpoint, ``.onnx`` file."""

from __future__ import annotations

from pathlib import Path

import torch

from eqmcli.interop.onnx import load_onnx
from eqmcli.rundir import Trained, load_trained


def load_model(target: str | Path, device: str | torch.device = "cpu") -> Trained:
    """A run directory (its ``checkpoints/last.pt``), a checkpoint file, or an ``.onnx`` file
    (run by onnxruntime on the CPU; its outputs are moved to ``device``), in eval mode."""
    path = Path(target)
    if path.suffix.lower() == ".onnx":
        return load_onnx(path)
    return load_trained(path, device=device)
