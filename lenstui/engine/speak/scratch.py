"""Work matrices reused from one chunk of the vocabulary scan to the next.

A fresh chunk-by-vocabulary float32 matrix (512 x 49152, 100 MB for SmolLM2) is mapped
from the system afresh each time it is made and returned when freed, so every new one
pays its page faults again: about 50 ms, as much as a dozen in-place passes over it, and
15-20% of the matrix product that fills it. The scan's products and the theta bounds'
work matrices therefore live in a ``Scratch`` for the whole scan and are handed out by
role.
"""

from __future__ import annotations

import math

import torch


class Scratch:
    """Reusable tensors by role: ``take(role, shape)`` returns a tensor of that shape
    (uninitialised) over the role's storage, grown when too small. A role's tensor stays
    valid until that role is taken again; two tensors alive at once need two roles."""

    def __init__(self) -> None:
        self._storage: dict[str, torch.Tensor] = {}

    def take(self, role: str, shape: tuple[int, ...], device: torch.device, dtype=torch.float32) -> torch.Tensor:
        numel = math.prod(shape)
        storage = self._storage.get(role)
        if storage is None or storage.numel() < numel or storage.dtype != dtype or storage.device != device:
            storage = self._storage[role] = torch.empty(numel, dtype=dtype, device=device)
        return storage[:numel].view(shape)
