"""Tensors from one naming scheme to another through an explicit table, every name and shape
checked: a tensor the table does not know, a tensor the table needs but the file lacks, a
shape that differs and a NaN or infinite value are each one `UserError` naming the tensor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from eqmcli.errors import UserError
from eqmcli.run.checkpoint import refuse_non_finite

#: BatchNorm's update counter: no effect on the function, absent from some exported files
OPTIONAL_SUFFIX = "num_batches_tracked"


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in tensor.shape) + ")"


def _first(names: list[str]) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"'{names[0][:120]}'{more}"


def remap_tensors(
    source: Mapping[str, Any],
    table: Mapping[str, str],
    expected: Mapping[str, torch.Tensor],
    *,
    source_name: str,
    target_name: str,
) -> dict[str, torch.Tensor]:
    """``source`` renamed through ``table`` (source name -> target name), checked against
    ``expected`` (target name -> tensor of the right shape and dtype).

    Returns target name -> tensor (cast to the expected dtype). A source counter named
    `OPTIONAL_SUFFIX` may be missing (the expected value is kept). A floating-point tensor
    holding NaN or an infinity is refused (it would make every embedding NaN). ``source_name`` (the
    file) and ``target_name`` (what it should fit, e.g. "eqm's iresnet50") go into messages.
    """
    if sorted(table.values()) != sorted(expected):
        raise ValueError(f"the name table does not cover {target_name} exactly")  # a bug
    unknown = [name for name in source if name not in table]
    if unknown:
        raise UserError(
            f"{source_name}: unknown tensor {_first(sorted(unknown))}: not part of {target_name}"
        )
    missing = [
        name for name in table if name not in source and not name.endswith(OPTIONAL_SUFFIX)
    ]
    if missing:
        raise UserError(
            f"{source_name}: tensor {_first(missing)} is missing; {target_name} needs it"
        )
    result: dict[str, torch.Tensor] = {}
    for name, target in table.items():
        reference = expected[target]
        if name not in source:
            result[target] = reference.clone()
            continue
        tensor = source[name]
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{source_name}: '{name[:120]}' is not a tensor")
        if tensor.shape != reference.shape:
            renamed = f" for '{target}'" if target != name else ""
            raise UserError(
                f"{source_name}: tensor '{name[:120]}' has shape {_shape(tensor)} but "
                f"{target_name} needs {_shape(reference)}{renamed}"
            )
        refuse_non_finite(tensor, name, source_name)
        result[target] = tensor.detach().to(dtype=reference.dtype, device="cpu").clone()
    return result
