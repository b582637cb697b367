"""GGUF control vectors: the file llama.cpp's ``--control-vector`` and repeng read and write.

Layout (as repeng's ``ControlVector.export_gguf`` writes it): ``general.architecture =
"controlvector"``, ``controlvector.model_hint`` (a string), ``controlvector.layer_count`` (the
number of direction tensors, uint32) and one 1-D F32 tensor ``direction.<N>`` per steered layer.

Layer index: ``direction.N`` is added to the output of decoder block N, 0-based — llama.cpp's
``il`` (``build_cvec(cur, il)`` right after block il's last residual add), repeng's layer id
(read from ``hidden_states[N + 1]``, applied to ``model.layers[N]``), and this library's plan
layer ``j``. So ``j == N``: no shift. llama.cpp rejects ``direction.0`` (block 0's output is
never steered there), so exporting a plan that steers block 0 is refused.

llama.cpp adds the stored tensor as is (times ``--control-vector-scaled`` strength) at every
position, prompt included — ``scope="all"``. With ``bake_alpha`` (the default) the tensor is
``alpha · α_j · v_j``, bit-equal to what :func:`expertsteer.steer.attach` adds; without it the
tensor is the unit ``v_j`` and the strengths live only in this library's metadata (llama.cpp and
repeng ignore it: scale with ``--control-vector-scaled`` / ``coeff`` yourself).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .export_lmeval import baked_scale, export_lm_eval
from .io import CorruptFileError, atomic_path, tensors_digest
from .plan import ModelInfo, SteeringPlan
from .registry import Registry

ARCH = "controlvector"
FORMAT_VERSION = 1
# Our own keys: llama.cpp's loader reads only the tensors, repeng only the model hint.
KEY_VERSION = "expertsteer.format_version"
KEY_PLAN = "expertsteer.plan"  # JSON: target, α, layer norms, method, … (no tensors)
KEY_BAKED = "expertsteer.alpha_baked"
KEY_ALPHA = "expertsteer.alpha"
KEY_DIGEST = "expertsteer.tensors_sha256"


def _direction(plan: SteeringPlan, j: int, scale: float) -> torch.Tensor:
    # float64 product, one rounding to float32, then the product: SteeringPlan.combine exactly
    coef = torch.tensor([[scale * plan.alphas[j]]], dtype=torch.float64).float()
    return (coef @ plan.vectors[j][None])[0]


def export_gguf(
    plan: SteeringPlan,
    path: str | os.PathLike,
    *,
    alpha: float | None = None,
    bake_alpha: bool = True,
    model_hint: str | None = None,
) -> Path:
    """Write ``plan`` as a llama.cpp / repeng control-vector GGUF file (atomically).

    ``bake_alpha``: store ``alpha · α_j · v_j`` (``alpha`` defaults to 1), ready for
    ``llama-cli --control-vector F``; otherwise the unit vectors ``v_j`` (then ``alpha`` must be
    left unset: scale at load time). ``model_hint`` defaults to the plan's target name.
    """
    import gguf

    scale = baked_scale(alpha, bake_alpha)
    if 0 in plan.vectors:
        raise ValueError(
            "the plan steers block 0, which llama.cpp cannot steer (it rejects direction.0); "
            f"export the other layers with plan.select({[j for j in plan.layers if j]})"
        )
    tensors = {
        f"direction.{j}": _direction(plan, j, scale) if bake_alpha else plan.vectors[j].clone()
        for j in plan.layers
    }
    meta = {
        "library_version": __version__,
        "method": plan.method,
        "target": asdict(plan.target),
        "expert": asdict(plan.expert) if plan.expert else None,
        "pairs": [list(p) for p in plan.pairs],
        "alphas": {str(j): a for j, a in plan.alphas.items()},
        "layer_norms": {str(j): n for j, n in plan.layer_norms.items()},
        "config": plan.config,
        "provenance": plan.provenance,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint or plan.target.name)
        writer.add_uint32(f"{ARCH}.layer_count", len(tensors))
        writer.add_uint32(KEY_VERSION, FORMAT_VERSION)
        writer.add_bool(KEY_BAKED, bake_alpha)
        writer.add_float64(KEY_ALPHA, scale)
        writer.add_string(KEY_PLAN, json.dumps(meta, sort_keys=True, default=str))
        writer.add_string(KEY_DIGEST, tensors_digest(tensors))
        for name, t in tensors.items():
            writer.add_tensor(name, t.numpy().astype(np.float32, copy=False))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    if field is None or not field.types:
        return None
    try:
        return field.contents()
    except ValueError as exc:  # e.g. a damaged string: UnicodeDecodeError
        raise CorruptFileError(f"the GGUF field {key!r} is damaged ({exc})") from exc


def read_gguf(path: str | os.PathLike) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """The ``direction.N`` tensors (float32, copied) and the metadata fields of a GGUF file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises several types on truncation or garbage
        raise CorruptFileError(f"{path} is not a readable GGUF file ({exc})") from exc
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise CorruptFileError(
            f"{path} is a GGUF file of architecture {arch!r}, not a control vector "
            f"({ARCH!r}); pass the control-vector file, not a model"
        )
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        if prefix != "direction" or not index.isdecimal():  # isdigit() passes '¹'
            raise CorruptFileError(f"{path}: tensor {t.name!r} is not named direction.<layer>")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise CorruptFileError(f"{path}: {t.name} must be a 1-D F32 tensor (llama.cpp's rule)")
        v = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
        j = int(index)
        directions[j] = directions[j] + v if j in directions else v  # llama.cpp sums duplicates
    if not directions:
        raise CorruptFileError(f"{path} holds no direction.<layer> tensors")
    sizes = {v.numel() for v in directions.values()}
    if len(sizes) != 1:
        raise CorruptFileError(f"{path}: direction tensors have different sizes {sorted(sizes)}")
    meta = {f.name: _field(reader, f.name) for f in reader.fields.values()}
    return directions, meta


def _target_info(target: Any) -> ModelInfo:
    return target if isinstance(target, ModelInfo) else ModelInfo.of(target)


def _check_saved(saved: Any, path: Path, layers: list[int], *, unbaked: bool) -> None:
    """The plan JSON lies outside the tensor checksum: check its shape before using it."""
    try:
        if not isinstance(saved, dict):
            raise TypeError(f"a JSON {type(saved).__name__}, not an object")
        for key in ("target", "expert"):
            if saved.get(key):
                ModelInfo.from_dict(saved[key])
        if unbaked:
            [float(saved["alphas"][str(j)]) for j in layers]
        if not all(isinstance(p, list) and len(p) == 2 for p in saved.get("pairs", [])):
            raise TypeError(f"pairs {saved['pairs']!r} are not [expert, target] lists")
        {int(j): float(n) for j, n in saved.get("layer_norms", {}).items()}
        for key, kind in (("config", dict), ("provenance", dict), ("method", str)):
            if saved.get(key) is not None and not isinstance(saved[key], kind):
                raise TypeError(f"{key} is a {type(saved[key]).__name__}")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CorruptFileError(
            f"{path}: the {KEY_PLAN} metadata is malformed ({type(exc).__name__}: {exc})"
        ) from exc


def import_gguf(
    path: str | os.PathLike,
    target: Any = None,
    *,
    method: str | None = None,
) -> SteeringPlan:
    """Read a control-vector GGUF file (ours, repeng's or llama.cpp's) as a :class:`SteeringPlan`.

    ``target`` is the model the plan is for: a loaded model (:func:`expertsteer.load_model`) or
    a :class:`ModelInfo`. Files written by :func:`export_gguf` carry it; files from repeng or
    llama.cpp do not, so it is required for them. ``direction.N`` becomes plan layer ``N``.

    A direction ``d`` becomes ``α = ‖d‖``, ``v = d / ‖d‖``, so steering adds ``d`` at
    ``alpha=1`` (the llama.cpp / repeng meaning). Our unbaked files restore the unit vectors
    bit-exactly and their α from the metadata.
    """
    path = Path(path)
    directions, meta = read_gguf(path)
    ours = meta.get(KEY_VERSION) is not None
    saved: dict[str, Any] = {}
    if ours:
        if meta[KEY_VERSION] != FORMAT_VERSION:
            raise CorruptFileError(
                f"{path} has expertsteer format_version {meta[KEY_VERSION]}; this library reads "
                f"{FORMAT_VERSION}"
            )
        named = {f"direction.{j}": v for j, v in directions.items()}
        if tensors_digest(named) != meta.get(KEY_DIGEST):
            raise CorruptFileError(f"{path} is corrupted: its checksum does not match its tensors")
        try:
            saved = json.loads(meta[KEY_PLAN])
            alphas_saved = {int(j): float(a) for j, a in saved["alphas"].items()}
            target_saved = ModelInfo.from_dict(saved["target"])
            expert_saved = ModelInfo.from_dict(saved["expert"]) if saved.get("expert") else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptFileError(
                f"{path}: the {KEY_PLAN} metadata is malformed ({type(exc).__name__}: {exc}); "
                "re-export the plan"
            ) from exc
        if set(alphas_saved) != set(directions):
            raise CorruptFileError(f"{path}: its metadata and tensors name different layers")
        _check_saved(saved, path, list(directions), unbaked=meta.get(KEY_BAKED) is False)
    if target is not None:
        info = _target_info(target)
    elif ours:
        info = target_saved
    else:
        raise ValueError(
            f"{path} was not written by expertsteer (no target recorded): pass target= (a loaded "
            "model or a ModelInfo), e.g. `expertsteer import-gguf FILE --target MODEL`"
        )
    d = next(iter(directions.values())).numel()
    if d != info.hidden_size:
        raise ValueError(
            f"{path} holds {d}-dimensional directions but {info.name} has hidden size "
            f"{info.hidden_size}: the file is for another model"
        )
    too_deep = [j for j in directions if j >= info.n_layers]
    if too_deep:
        raise ValueError(
            f"{path} steers layers {too_deep}, beyond {info.name}'s {info.n_layers} blocks"
        )
    unbaked = ours and meta.get(KEY_BAKED) is False
    if unbaked:
        vectors, alphas = directions, alphas_saved
    else:
        alphas = {j: float(v.double().norm()) for j, v in directions.items()}
        vectors = {j: v / alphas[j] if alphas[j] > 0 else v for j, v in directions.items()}
    provenance = {
        "imported_from": str(path),
        "model_hint": meta.get(f"{ARCH}.model_hint"),
        "alpha_baked": None if not ours else bool(meta.get(KEY_BAKED)),
        "baked_alpha": meta.get(KEY_ALPHA) if ours and meta.get(KEY_BAKED) else None,
    }
    if saved.get("provenance"):
        provenance["original"] = saved["provenance"]
    return SteeringPlan(
        vectors=vectors,
        alphas=alphas,
        target=info,
        method=method or saved.get("method") or "gguf",
        expert=expert_saved if ours else None,
        pairs=[tuple(p) for p in saved.get("pairs", []) if p[1] in directions],
        layer_norms={
            int(j): float(n) for j, n in saved.get("layer_norms", {}).items() if int(j) in vectors
        },
        config=saved.get("config", {}),
        provenance=provenance,
    )


# The formats `expertsteer export --format` writes: name -> writer(plan, path, **options).
EXPORT_FORMATS: Registry = Registry("export format")
EXPORT_FORMATS.register("gguf", export_gguf, "a llama.cpp / repeng control vector")
EXPORT_FORMATS.register(
    "lm-eval", export_lm_eval, "lm-evaluation-harness's `--model steered` file (.pt)"
)
