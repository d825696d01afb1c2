"""Which device runs the model: 'auto' (the first CUDA GPU when there is one), 'cpu', 'cuda', 'cuda:N'."""

from __future__ import annotations

import torch

from ..base.errors import InspectorError


class DeviceError(InspectorError):
    """The requested device does not exist on this machine."""


def resolve_device(spec: str | None = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("no CUDA GPU is available on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def device_name(device: torch.device) -> str:
    """The device for people: 'cuda (NVIDIA H100 …)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def device_tag(device: torch.device) -> str:
    """The device in one word, for benchmark lines: cpu, or cuda:<GPU name>."""
    if device.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(device).replace(" ", "_")
    return "cpu"
