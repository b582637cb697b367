"""Plans as lm-evaluation-harness steering files: ``lm_eval --model steered``.

lm-eval's built-in ``steered`` model (``lm_eval/models/hf_steered.py``, ``SteeredModel``) is
its HF backend with forward hooks. Its ``steer_path`` is a ``.pt``/``.pth`` file it reads with
torch's loader with ``weights_only`` off — full pickle — holding one entry per hook point::

    {hookpoint: {"steering_vector": Tensor[d], "steering_coefficient": float,
                 "action": "add", "bias": None, "head_index": None}, ...}

(a ``.csv`` there derives vectors from sparse autoencoders: not ours). A hook point is a module
name in ``model.base_model.named_modules()`` — relative to the base model, so ``layers.N`` for a
Llama, ``h.N`` for a GPT-2, ``language_model.layers.N`` for a Gemma 3 wrapper — and lm-eval
hooks that module's *output* (the first element when it returns a tuple). Our plan layer ``j``
is added to the output of decoder block ``j`` (:func:`expertsteer.layers.find_layers`, as the
hooks find it), so ``j`` maps to ``<block list path relative to base_model>.j``: no shift.

``action="add"`` adds ``steering_vector · steering_coefficient`` (cast to the model's dtype) at
every position, prompt, continuation and padding alike: our ``scope="all"`` (we skip padding;
lm-eval scores right-padded batches without a mask, so padding never reaches a scored token).
Only ``add`` is written; lm-eval's ``clamp`` has no plan counterpart. With ``bake_alpha`` (the
default) the vector is ``alpha · α_j · v_j``, bit-equal to what :func:`expertsteer.steer.attach`
adds, with coefficient 1; without it the unit ``v_j`` with coefficient ``α_j``, to edit by hand.

The file is written with :func:`torch.save` (plain dicts, tensors, floats, strings and
``None``: ``torch.load(..., weights_only=True)`` reads it too). lm-eval unpickles it; this
library never reads it back. The hook names need the target's module tree but not its
weights: the model is built on the ``meta`` device from its config, offline.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_path
from .layers import find_layers
from .models import LoadedModel
from .plan import SteeringPlan

SUFFIXES = (".pt", ".pth")  # lm-eval picks its reader by suffix (case-sensitive)


def baked_scale(alpha: float | None, bake_alpha: bool) -> float:
    """The global scale an export (lm-eval here, GGUF in :mod:`.export`) bakes in: 1 when
    ``alpha`` is unset; ``alpha`` without ``bake_alpha`` is refused (an unbaked file stores the
    unit vectors only)."""
    if not bake_alpha and alpha is not None:
        raise ValueError(
            "alpha is only stored when it is baked in; drop alpha, or keep bake_alpha=True"
        )
    scale = 1.0 if alpha is None else float(alpha)
    if not math.isfinite(scale):
        raise ValueError(f"alpha must be a finite number, not {alpha!r}")
    return scale


def model_skeleton(name: str | os.PathLike) -> nn.Module:
    """The causal LM lm-eval's HFLM would load for ``name`` (a catalog name, model folder or
    hub id already cached), built from its config on the meta device: no weights are read."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import ModelLoadError, _kind_of, _resolve

    source, gguf = _resolve(name, None)
    try:
        config = AutoConfig.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read the config of {str(name)!r} ({type(exc).__name__}); pass target= a "
            "local model folder, a catalog name or a loaded model"
        ) from exc
    if _kind_of(config) != "causal":
        raise ValueError(f"{name} is not a causal LM: lm-eval's steered model is one")
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def hookpoints(
    model: nn.Module, layers: list[int] | None = None, *, layers_path: str | None = None
) -> dict[int, str]:
    """lm-eval's hook point name (in ``model.base_model.named_modules()``) of each block."""
    stack = find_layers(model, layers_path)
    base = getattr(model, "base_model", model)
    prefix = next(n for n, m in model.named_modules() if m is base) if base is not model else ""
    if prefix and not stack.path.startswith(prefix + "."):
        raise ValueError(
            f"the blocks of {type(model).__name__} ({stack.path}) lie outside its base model "
            f"({prefix}), which lm-eval's steered model hooks"
        )
    rel = stack.path[len(prefix) + 1 :] if prefix else stack.path
    names = dict(base.named_modules())
    out = {}
    for j in range(len(stack)) if layers is None else layers:
        name = f"{rel}.{j}"
        if names.get(name) is not stack.blocks[j]:
            raise ValueError(f"{name} is not block {j} of {type(model).__name__}'s base model")
        out[j] = name
    return out


def steered_model_args(name: str | os.PathLike, steer_path: str | os.PathLike) -> str:
    """``--model_args`` for ``lm_eval --model steered`` with the exported file on ``name``."""
    from .models import _resolve

    source, gguf = _resolve(name, None)
    extra = f",gguf_file={gguf}" if gguf else ""
    return f"pretrained={source}{extra},steer_path={steer_path}"


def export_lm_eval(
    plan: SteeringPlan,
    path: str | os.PathLike,
    *,
    alpha: float | None = None,
    bake_alpha: bool = True,
    target: Any = None,
    layers_path: str | None = None,
) -> Path:
    """Write ``plan`` as lm-eval's ``steered`` model file (atomically); returns ``path``.

    ``target`` gives the module names: a loaded model (its fingerprint is checked against the
    plan's), an HF model, or a catalog name / model folder (only its config is read); default
    the plan's target name. ``alpha`` (default 1) is baked in as by
    :func:`expertsteer.export.export_gguf`; ``bake_alpha=False`` stores unit vectors with
    ``steering_coefficient = α_j``. Use the file as
    ``lm_eval --model steered --model_args pretrained=FOLDER,steer_path=FILE``
    (:func:`steered_model_args`).
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"lm-eval reads steering files ending in .pt or .pth, not {path.name!r}")
    scale = baked_scale(alpha, bake_alpha)
    if target is None:
        target = plan.target.name
    if isinstance(target, LoadedModel):
        plan.check_target(target)
        model, layers_path, what = target.model, layers_path or target.layers.path, target.name
    elif isinstance(target, nn.Module):
        model, what = target, type(target).__name__
    else:
        model, what = model_skeleton(target), str(target)
    stack = find_layers(model, layers_path)
    if (len(stack), stack.hidden_size) != (plan.target.n_layers, plan.target.hidden_size):
        raise ValueError(
            f"the plan is for {plan.target.name} ({plan.target.n_layers} blocks, hidden "
            f"{plan.target.hidden_size}); {what} has {len(stack)} blocks, hidden "
            f"{stack.hidden_size}"
        )
    names = hookpoints(model, plan.layers, layers_path=stack.path)
    # the additions exactly as attach() computes them (float64 α products, one rounding)
    added = SteeringPlan.combine([(plan, torch.tensor([scale], dtype=torch.float64))])
    config = {
        names[j]: {
            "steering_vector": (added[j][0] if bake_alpha else plan.vectors[j]).clone(),
            "steering_coefficient": 1.0 if bake_alpha else plan.alphas[j],
            "action": "add",
            "bias": None,
            "head_index": None,
        }
        for j in plan.layers
    }
    with atomic_path(path) as tmp:
        torch.save(config, tmp)
    return path
