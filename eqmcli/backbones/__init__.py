"""Face-embedding backbones: float images (B, 3, H, W) -> raw embeddings (B, embedding_dim).

Inputs are normalized as (x/255 - 0.5)/0.5; outputs are not L2-normalized (the heads
and the verification code normalize). Every net accepts channels_last inputs and runs
under `torch.autocast`.

    >>> net = build_backbone("iresnet50", embedding_dim=512, input_size=(112, 112))
    >>> default_input_size("sphere20")
    (112, 96)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from eqmcli.backbones.iresnet import IResNet
from eqmcli.backbones.mobilefacenet import ARCFACE_MBF_LAYOUT, MobileFaceNet
from eqmcli.backbones.sphere import SphereNet
from eqmcli.backbones.tiny import TinyNet
from eqmcli.errors import UserError

__all__ = [
    "BACKBONE_NAMES",
    "IResNet",
    "MobileFaceNet",
    "SphereNet",
    "TinyNet",
    "build_backbone",
    "default_input_size",
]

_Factory = Callable[[int, tuple[int, int]], nn.Module]

# name -> (factory(embedding_dim, input_size), default (height, width) in pixels)
_REGISTRY: dict[str, tuple[_Factory, tuple[int, int]]] = {
    "iresnet18": (lambda d, s: IResNet(18, embedding_dim=d, input_size=s), (112, 112)),
    "iresnet34": (lambda d, s: IResNet(34, embedding_dim=d, input_size=s), (112, 112)),
    "iresnet50": (lambda d, s: IResNet(50, embedding_dim=d, input_size=s), (112, 112)),
    "iresnet100": (lambda d, s: IResNet(100, embedding_dim=d, input_size=s), (112, 112)),
    "sphere20": (lambda d, s: SphereNet(20, embedding_dim=d, input_size=s), (112, 96)),
    "sphere64": (lambda d, s: SphereNet(64, embedding_dim=d, input_size=s), (112, 96)),
    "mobilefacenet": (lambda d, s: MobileFaceNet(embedding_dim=d, input_size=s), (112, 112)),
    # arcface_torch's MobileFaceNet ("mbf"): the paper's layout at twice the width
    "mbf": (
        lambda d, s: MobileFaceNet(
            embedding_dim=d, input_size=s, layout=ARCFACE_MBF_LAYOUT, name="mbf"
        ),
        (112, 112),
    ),
    "tiny": (lambda d, s: TinyNet(embedding_dim=d, input_size=s), (48, 48)),
}

#: every name `build_backbone` accepts
BACKBONE_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _lookup(name: str) -> tuple[_Factory, tuple[int, int]]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}"
        ) from None


def default_input_size(name: str) -> tuple[int, int]:
    """The (height, width) in pixels that backbone `name` is designed for."""
    return _lookup(name)[1]


def build_backbone(
    name: str,
    *,
    embedding_dim: int = 512,
    input_size: Sequence[int] = (112, 112),
) -> nn.Module:
    """Build backbone `name` for `input_size` = (H, W) px, returning (B, embedding_dim).

    The module also carries `.embedding_dim` and `.input_size` attributes. Raises
    `UserError` for an unknown name, a non-positive embedding size, or an input size the
    network cannot take (iresnet/sphere/mobilefacenet: H, W >= 16; tiny: 24..128).
    """
    factory, _ = _lookup(name)
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise UserError(
            f"backbone {name!r}: embedding_dim must be a positive integer, got {embedding_dim!r}"
        )
    try:
        height, width = input_size
    except (TypeError, ValueError):
        height = width = None
    if height is None or isinstance(input_size, (str, bytes)):
        raise UserError(
            f"backbone {name!r}: input_size must be (height, width) in pixels, got {input_size!r}"
        )
    return factory(embedding_dim, (height, width))
