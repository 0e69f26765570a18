"""The dtypes and devices a model loads with, named as the command line names them."""

from __future__ import annotations

from typing import Optional

import torch

from lenstui.core.errors import ModelLoadError, quoted

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(
            f"Unknown dtype {quoted(name)}: choose one of {', '.join(DTYPES)}."
        ) from None


def resolve_device(name: Optional[str]) -> str:
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"Unknown device {quoted(name)}: use cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"Device {quoted(name)} was asked for but this torch build sees no CUDA GPU: "
            "use --device cpu, or install a CUDA build of torch (TORCH_INDEX in the Makefile)."
        )
    return str(device)
