"""Checkpoint files: atomic writes, safe (`weights_only`) reads, one clear error if corrupt.

A checkpoint is written through `eqmcli.atomic.atomic_write` (temporary sibling, fsync,
rename): a crash or a full disk leaves the previous file intact, and the file's mode
follows the user's umask like every other run file.
"""

from __future__ import annotations

import errno
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from eqmcli.atomic import atomic_write
from eqmcli.errors import UserError

#: what torch's zip writer says when a write of the stream failed (e.g. the disk is full)
FAILED_WRITE_MARKS = ("inline_container", "unexpected pos")


def torch_save(obj: Any, stream: BinaryIO) -> None:
    """`torch.save(obj, stream)`, with a failed write raised as an `OSError`.

    torch reports a failed write (disk full, quota) as a `RuntimeError` ("[enforce fail at
    inline_container.cc ...] unexpected pos ..."); the `OSError` behind it is raised instead
    (or, when there is none, one saying the write failed), which `atomic_write` turns into
    one sentence. Other errors are bugs and keep their type.
    """
    try:
        torch.save(obj, stream)
    except RuntimeError as error:
        cause = error.__context__
        if isinstance(cause, OSError):
            raise cause from None
        text = str(error).strip()
        if not any(mark in text for mark in FAILED_WRITE_MARKS):
            raise
        first = text.splitlines()[0][:160]
        raise OSError(errno.EIO, f"the write failed (torch: {first})") from None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to a temporary file beside `path`, then rename it over `path`.

    A crash mid-write leaves the previous file untouched, never a half-written one; a
    failed write (e.g. no space left) raises `StorageError` saying so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda stream: torch_save(state, stream))


#: torch's words when `weights_only` refuses a pickled object that is not a tensor
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
_ASKED_FOR = re.compile(r"Unsupported (?:global|operand)[^A-Za-z0-9_]*(?:GLOBAL )?([\w.]+)")


def read_torch_file(
    path: Path, kind: str, map_location: str | torch.device = "cpu"
) -> Any:
    """`torch.load(path, weights_only=True)`: never runs code in the file.

    ``kind`` names the file in messages ("eqm checkpoint", "PyTorch weights file"). A file
    whose pickle holds other Python objects than tensors (which would need code execution)
    is refused in plain words; an unreadable one is one `UserError` with torch's first line.
    """
    if not path.is_file():
        raise UserError(f"{kind} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as exc:
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and WEIGHTS_ONLY_REFUSAL in text:
            asked = _ASKED_FOR.search(text)
            what = f" (it asks for {asked.group(1)[:80]})" if asked else ""
            raise UserError(
                f"{path} holds Python objects besides tensors{what}: loading it would need "
                "code execution and is refused; save the weights alone (a state_dict of "
                "tensors) from a copy you trust"
            ) from None
        first_line = text.splitlines()[0][:200] if text else type(exc).__name__
        raise UserError(f"{path} is not a readable {kind} ({first_line})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `read_torch_file` (never runs code in the file)."""
    path = Path(path)
    state = read_torch_file(path, "eqm checkpoint", map_location)
    if not isinstance(state, dict) or "backbone" not in state:
        raise UserError(f"{path} is not an eqm checkpoint (no 'backbone' weights in it)")
    return state


def require_fields(state: Mapping[str, Any], fields: Iterable[str], source: str | Path) -> None:
    """`UserError` naming the first of `fields` that `state` lacks."""
    for name in fields:
        if name not in state:
            raise UserError(
                f"{source} lacks '{name}': it is damaged or was not written by 'eqm train'"
            )


def refuse_non_finite(tensor: Any, name: str, source: str | Path) -> None:
    """`UserError` when the floating-point ``tensor`` (called ``name`` in ``source``) holds
    NaN or an infinity: such weights make every embedding NaN."""
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise UserError(
                f"{source}: tensor '{name[:120]}' holds {bad:,} NaN or infinite value(s) of "
                f"{tensor.numel():,}; weights that are not finite are refused"
            )


def load_weights(
    module: nn.Module, weights: Any, source: str | Path, part: str, recipe_says: str = ""
) -> None:
    """`module.load_state_dict(weights)`, or one sentence naming the first mismatch or the
    first tensor that is not finite (`refuse_non_finite`).

    `part` names what is loaded ("backbone", "head"); `recipe_says` the recipe settings
    the module was built from, e.g. "model.backbone tiny, model.embedding_dim 16".
    """
    if not isinstance(weights, Mapping):
        raise UserError(f"{source}: its {part} weights are not a state dict")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [key for key in expected if key in weights and
             tuple(getattr(weights[key], "shape", ())) != tuple(expected[key].shape)]
    if wrong:
        key = wrong[0]
        problem = (f"'{key}' has shape {tuple(weights[key].shape)}, the recipe's model needs "
                   f"{tuple(expected[key].shape)}")
    elif missing or unexpected:
        key = (missing or unexpected)[0]
        problem = f"'{key[:80]}' is {'missing' if missing else 'not part of that model'}"
    else:
        for key in expected:
            refuse_non_finite(weights[key], f"{part}.{key}", source)
        module.load_state_dict(weights)
        return
    recipe = f"the stored recipe ({recipe_says})" if recipe_says else "the stored recipe"
    raise UserError(f"{source}: {recipe} disagrees with its {part} weights: {problem}")
