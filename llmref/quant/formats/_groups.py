"""The one reshaping every family shares: a tensor as float32 groups along its last dimension."""

from __future__ import annotations

import torch


def _flat_groups(x: torch.Tensor, g: int) -> torch.Tensor:
    return x.detach().to(torch.float32).reshape(-1, g)
