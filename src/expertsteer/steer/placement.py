"""Where each steered block computes: its device and dtype, also under accelerate offloading.

A delta is moved to its block's device and dtype once, when the hooks are attached, so the hook
itself never copies (blocks may sit on different devices under a ``device_map``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models import LoadedModel

Placement = tuple[torch.device, torch.dtype]


def execution_device(module: nn.Module) -> Any:
    """The device accelerate runs ``module`` on (its ``_hf_hook``), or ``None`` if not hooked."""
    return getattr(getattr(module, "_hf_hook", None), "execution_device", None)


def block_placement(
    block: nn.Module, fallback: torch.device, outer: Sequence[nn.Module] = ()
) -> Placement:
    """The device and dtype a block computes in (accelerate's execution device when offloaded).

    accelerate hooks the block itself (device_map), its leaf modules (disk offload) or only an
    ancestor (``cpu_offload``: every weight on ``meta``); ``outer`` are the block's ancestors,
    consulted last, when the block holds no real weight to tell.
    """
    floats = [p for p in block.parameters() if p.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.float32
    device = next((d for m in block.modules() if (d := execution_device(m)) is not None), None)
    if device is None:
        device = next((p.device for p in floats if p.device.type != "meta"), None)
    if device is None:
        device = next((d for m in reversed(outer) if (d := execution_device(m)) is not None), None)
    return torch.device(device if device is not None else fallback), dtype


def path_modules(lm: LoadedModel) -> list[nn.Module]:
    """The model and each module on the way down to the block list's parent."""
    modules, module = [lm.model], lm.model
    for part in lm.layers.path.split(".")[:-1]:
        module = getattr(module, part)
        modules.append(module)
    return modules
