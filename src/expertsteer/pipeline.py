"""ExpertSteer end to end: expert states → align (1) → MI pairing (2) → vectors (3) → plan.

Models are loaded one at a time (expert, freed, then target), so peak memory stays near the
larger model; hidden states come from the on-disk cache when present.
"""

from __future__ import annotations

import gc
import inspect
import operator
import random
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from . import __version__
from .align import ALIGNERS, Aligner
from .data import Dataset, check_dataset, generic_texts
from .estimators import ESTIMATORS, DirectionEstimator, auc
from .extract import encode, extract, extract_to_cache
from .mi import MI_ESTIMATORS, mi_matrix
from .models import LoadedModel, load_model, load_tokenizer
from .pairing import PAIRINGS, depth_match, depth_pairs, select_pairs
from .plan import ModelInfo, SteeringPlan
from .registry import Registry, UnknownNameError
from .tokens import shared_token_ends
from .types import LayerPair, ReadPosition, Tensor

ModelRef = str | LoadedModel
# encoded: the estimator on f_i(h^E_i) (target space); expert: in expert space, carried over.
ROUTES = ("encoded", "expert")
# The baselines: each estimator fitted on the target's own states, by method name. RFM's is
# "self-rfm" (the paper's RFM on the target itself) and comes last, as before.
_RENAMED = {"rfm": "self-rfm"}
TARGET_METHODS: dict[str, str] = {
    _RENAMED.get(e, e): e
    for e in sorted(ESTIMATORS, key=lambda e: e in _RENAMED)
    if e not in _RENAMED.values()
}
# The named read positions ("last", "mean"); explicit index lists are the other form.
READ_POSITIONS: tuple[str, ...] = typing.get_args(typing.get_args(ReadPosition)[0])

_T = TypeVar("_T")


def build(registry: Registry[_T], spec: str | _T, seed: int) -> _T:
    """A fresh aligner / estimator for one layer: from a name, with ``seed`` whenever the class
    takes one; or a clone of an instance (its own hyper-parameters, seed included)."""
    if not isinstance(spec, str):
        return registry.make(spec)
    takes_seed = "seed" in inspect.signature(registry[spec]).parameters
    return registry.make(spec, **({"seed": seed} if takes_seed else {}))


def spec_name(spec: object) -> str:
    """A name or an instance as the plan's config records it."""
    if isinstance(spec, str):
        return spec
    return str(getattr(spec, "name", None) or type(spec).__name__)


def _spec_json(spec: object) -> Any:
    if isinstance(spec, str):
        return spec
    params = getattr(spec, "get_params", dict)()
    safe = {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
            for k, v in params.items()}  # fmt: skip
    return {"name": spec_name(spec), "params": safe}


def check_position(position: ReadPosition, n_texts: int) -> None:
    """A read position the extraction accepts, checked before any model loads."""
    if isinstance(position, str):
        if position not in READ_POSITIONS:
            raise ValueError(
                f"position must be {' or '.join(map(repr, READ_POSITIONS))} or a list of index "
                f"lists, not {position!r}"
            )
    elif len(position) != n_texts:
        raise ValueError(f"position gives {len(position)} index lists for {n_texts} texts")


def _check_name(registry: Registry, spec: object, what: str) -> None:
    if isinstance(spec, str):
        try:
            registry.check(spec)
        except UnknownNameError:
            raise ValueError(f"{what} must be one of {registry.names}, not {spec!r}") from None


def _alpha_defaults(states: Tensor, layers: Sequence[int], scale: float) -> tuple[dict, dict]:
    """α_j = scale × mean residual norm of layer j: one setting that transfers across models."""
    norms = {j: float(states[j].norm(dim=-1).mean()) for j in layers}
    return {j: scale * n for j, n in norms.items()}, norms


class AlignStates:
    """One model's alignment states, read a layer at a time from the cache file (never whole).

    The file holds ``states`` [L, P, d] (see :func:`expertsteer.extract.extract_to_cache`, which
    checked it); replan needs any expert layer and any target layer for its pair maps, and all of
    them in memory would be hundreds of MB.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with safe_open(str(self.path), framework="pt") as f:
            self.shape = tuple(f.get_slice("states").get_shape())

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, layer: int) -> Tensor:
        """States [P, d] of one layer."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                out = f.get_slice("states")[layer : layer + 1][0]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the alignment states {self.path} left the cache after fit(); fit again"
            ) from None
        if (len(self), *out.shape) != self.shape:
            raise ValueError(f"{self.path} changed after fit(); fit again")
        return out


@dataclass
class _States:
    contrast: Tensor  # [L, N, d] at the read position
    align: AlignStates | Path | None = None  # [L, P, d] at the shared token positions
    info: ModelInfo | None = None


def _with_model(ref: ModelRef, fn, **load_kwargs):
    """Run ``fn(lm)`` with the model loaded just for it (freed afterwards if we loaded it)."""
    owned = not isinstance(ref, LoadedModel)
    lm = load_model(ref, **load_kwargs) if owned else ref
    try:
        return fn(lm)
    finally:
        if owned:
            del lm
            gc.collect()


class ExpertSteer:
    """Fit a :class:`SteeringPlan` for ``target`` from the hidden states of ``expert``.

    Hyper-parameters (sklearn style; nothing is learned in ``__init__``):

    - ``aligner``: a name in :data:`expertsteer.align.ALIGNERS` — ``ridge`` (default;
      target-aware, best measured transfer), ``procrustes``, ``paired-ae``, or ``ae`` (the
      paper's reconstruction-only auto-encoder, a baseline) — or an :class:`Aligner` instance
      (cloned per layer, its hyper-parameters kept). Each expert layer i is mapped onto the
      target layer at its own relative depth; these maps encode the states for the MI matrix
      (step 2). The vector of a chosen pair (i, j) goes through a map fitted for that pair,
      i → j (fitted once, kept in ``pair_aligners_``), unless j is i's depth-matched layer or the
      aligner ignores the target (``ae``). The held-out split of every map holds out whole texts.
    - ``pairing``: ``depth`` / ``highest`` / ``monotone`` (follow the high-MI ridge), ``lowest``
      (the paper's rule) or ``given`` (``given_pairs``); ``n_pairs``; ``exclude_outer`` blocks.
    - ``estimator``: a name in :data:`expertsteer.estimators.ESTIMATORS` (``rfm``, the
      paper's, by default) or a :class:`DirectionEstimator` instance (cloned per pair).
    - ``route``: ``encoded`` (estimator on f_i(h^E_i), already in target space) or ``expert``
      (estimator in expert space, the vector carried over by the map's linear part).
    - ``alpha_scale``: default α per layer as a fraction of its mean residual norm.
    - ``seed``: every seeded step (alignment texts and positions, and each aligner / estimator
      built from a name that takes a seed).
    - ``chat_template``: read the contrast texts as one user turn of each model's chat template
      (an encoder expert, which has none, reads them as written).
    - ``align_texts``: texts for the alignment maps, separate from the contrast data
      (default: the library's generic text set), read up to ``align_max_length`` tokens, at most
      ``max_align_positions`` shared positions per text (the cost is the forward passes).
    """

    def __init__(
        self,
        expert: ModelRef,
        target: ModelRef,
        *,
        aligner: str | Aligner = "ridge",
        pairing: str = "depth",
        n_pairs: int = 4,
        exclude_outer: int = 1,
        given_pairs: Sequence[LayerPair] | None = None,
        estimator: str | DirectionEstimator = "rfm",
        route: str = "encoded",
        mi_estimator: str = "gaussian",
        mi_components: int = 16,
        position: ReadPosition = "last",
        chat_template: bool = False,
        alpha_scale: float = 0.15,
        align_texts: Sequence[str] | None = None,
        n_align_texts: int = 192,
        align_max_length: int = 96,
        max_align_positions: int = 32,
        batch_size: int = 16,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.expert, self.target = expert, target
        self.aligner, self.pairing, self.n_pairs = aligner, pairing, n_pairs
        self.exclude_outer, self.given_pairs = exclude_outer, given_pairs
        self.estimator, self.route = estimator, route
        self.mi_estimator, self.mi_components = mi_estimator, mi_components
        self.position, self.chat_template, self.alpha_scale = position, chat_template, alpha_scale
        self.align_texts, self.n_align_texts = align_texts, n_align_texts
        self.align_max_length, self.max_align_positions = align_max_length, max_align_positions
        self.batch_size, self.seed, self.progress = batch_size, seed, progress

    def _params(self) -> dict[str, Any]:
        skip = {"expert", "target", "progress", "align_texts"}
        out = {k: v for k, v in vars(self).items() if not k.endswith("_") and k not in skip}
        out["given_pairs"] = [list(p) for p in self.given_pairs] if self.given_pairs else None
        out["align_texts"] = "user" if self.align_texts is not None else "generic"
        out["aligner"], out["estimator"] = _spec_json(self.aligner), _spec_json(self.estimator)
        return out

    def _check(self, data: Dataset) -> None:
        """Everything that can be checked before a model is loaded (minutes saved on a typo)."""
        check_dataset(data)
        _check_name(ALIGNERS, self.aligner, "aligner")
        _check_name(ESTIMATORS, self.estimator, "estimator")
        _check_name(PAIRINGS, self.pairing, "pairing")
        _check_name(MI_ESTIMATORS, self.mi_estimator, "mi_estimator")
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, not {self.route!r}")
        check_position(self.position, len(data))
        if (self.pairing == "given") != (self.given_pairs is not None):
            raise ValueError(
                "pairing='given' and given_pairs go together: pass both, e.g. "
                "pairing='given', given_pairs=[(8, 10), (12, 16)], or neither"
            )
        overlap = set(data.texts) & set(self._align_texts())
        if overlap:
            raise ValueError(
                f"{len(overlap)} alignment texts also appear in the contrast data; the map must "
                "be fitted on separate texts or the 'expert' vector is the target's own"
            )

    def _align_texts(self) -> list[str]:
        if self.align_texts is not None:
            return list(self.align_texts)
        return generic_texts(self.n_align_texts, seed=self.seed)

    def _shared_positions(self, expert_lm: LoadedModel, target_tok, texts: list[str]):
        n = self.align_max_length
        enc_e = encode(expert_lm, texts, offsets=True, max_length=n)
        enc_t = target_tok(texts, return_offsets_mapping=True, truncation=True, max_length=n)
        rng = random.Random(self.seed)
        pos_e, pos_t = [], []
        for k, e in enumerate(enc_e):
            pairs = shared_token_ends(e["offsets"], enc_t["offset_mapping"][k])
            if len(pairs) > self.max_align_positions:
                pairs = sorted(rng.sample(pairs, self.max_align_positions))
            pos_e.append([p[0] for p in pairs])
            pos_t.append([p[1] for p in pairs])
        if sum(map(len, pos_e)) < 32:
            raise ValueError(
                "the two tokenizers share fewer than 32 token ends on the "
                "alignment texts; pass more or longer align_texts"
            )
        return pos_e, pos_t

    def fit(self, data: Dataset) -> SteeringPlan:
        """Run steps 1-3 on ``data`` (labelled prompts or contrast pairs) and return the plan.

        The fitted states stay on the estimator (``encoded_``, ``target_states_``, ``mi_``,
        the alignment states' files in ``align_states_``, ...), so :meth:`replan` can redo steps
        2-3 cheaply (other pairing, shuffled labels).
        """
        self._check(data)
        self._fit_states(data)
        return self.replan(data)

    def _fit_states(self, data: Dataset) -> None:
        self.__dict__.pop("texts_", None)  # a failed refit must not leave a half-new state
        timings: dict[str, float] = {}
        texts = list(data.texts)
        align_texts = self._align_texts()
        kw = dict(position=self.position, batch_size=self.batch_size, progress=self.progress)

        t0 = time.perf_counter()
        target_tok = (
            self.target.tokenizer
            if isinstance(self.target, LoadedModel)
            else load_tokenizer(self.target)
        )

        def read(lm: LoadedModel, positions: list[list[int]]) -> _States:
            """Contrast states at the read position + alignment states at shared positions.

            The alignment states are the big read (~0.5 GB for a 0.5B expert): they go to the
            cache file, read a layer at a time once the model is freed (:class:`AlignStates`)."""
            align = extract_to_cache(
                lm,
                align_texts,
                position=positions,
                batch_size=self.batch_size,
                max_length=self.align_max_length,
                progress=self.progress,
            )
            # An encoder has no chat template: it reads the contrast texts as written.
            chat = self.chat_template and lm.kind != "encoder"
            contrast = extract(lm, texts, chat_template=chat, **kw)
            return _States(contrast, align, ModelInfo.of(lm))

        def expert_pass(lm: LoadedModel):
            _check_given(self.given_pairs, 0, lm, "expert")
            pos_e, pos_t = self._shared_positions(lm, target_tok, align_texts)
            return read(lm, pos_e), pos_t

        ex, pos_t = _with_model(self.expert, expert_pass)
        ex.align = AlignStates(ex.align)
        timings["expert_states"] = time.perf_counter() - t0

        t0 = time.perf_counter()

        def target_pass(lm: LoadedModel) -> _States:
            _check_given(self.given_pairs, 1, lm, "target")
            return read(lm, pos_t)

        tg = _with_model(self.target, target_pass)
        tg.align = AlignStates(tg.align)
        timings["target_states"] = time.perf_counter() - t0

        self.expert_info_, self.target_info_ = ex.info, tg.info
        self.expert_states_, self.target_states_ = ex.contrast, tg.contrast
        self.align_states_ = (ex.align, tg.align)
        # The text of every alignment row: rows are the texts in order, one per shared position.
        counts = torch.tensor([len(p) for p in pos_t])
        self.align_groups_ = torch.repeat_interleave(torch.arange(len(pos_t)), counts)
        self.n_align_texts_, self.n_align_positions_ = len(align_texts), ex.align.shape[1]
        self.pair_aligners_: dict[LayerPair, Aligner] = {}
        self.mi_: Tensor | None = None
        self.timings_ = timings

        # Step 1: one map per expert layer, onto the target layer at the same relative depth.
        t0 = time.perf_counter()
        L_E, L_T = ex.contrast.shape[0], tg.contrast.shape[0]
        aligners, quality = [], {}
        desc = f"align ({spec_name(self.aligner)})"
        for i in tqdm(range(L_E), desc=desc, disable=not self.progress):
            j = depth_match(i, L_E, L_T)
            a = self._fit_map(i, j)
            aligners.append(a)
            quality[str(i)] = {"target_layer": j, **_quality(a)}
        timings["align"] = time.perf_counter() - t0
        self.aligners_, self.quality_ = aligners, quality
        self.encoded_ = [aligners[i].transform(ex.contrast[i]) for i in range(L_E)]
        self.texts_ = texts  # last: replan's sign that the fit is complete

    def _fit_map(self, i: int, j: int) -> Aligner:
        """A map from expert layer i onto target layer j, on the alignment states."""
        ex, tg = self.align_states_
        a = build(ALIGNERS, self.aligner, self.seed)
        return a.fit(ex[i], tg[j], groups=self.align_groups_)

    def _pair_map(self, i: int, j: int) -> tuple[Aligner, int]:
        """The map for pair (i, j)'s vector, and the target layer it was fitted on.

        Step 1's map of expert layer i unless it was fitted on another target layer and the
        aligner uses the target's states; then a map i → j, fitted once per pair."""
        own, j_own = self.aligners_[i], self.quality_[str(i)]["target_layer"]
        if j == j_own or not own.target_aware:  # ae's map does not depend on j
            return own, j_own
        if (i, j) not in self.pair_aligners_:
            self.pair_aligners_[(i, j)] = self._fit_map(i, j)
        return self.pair_aligners_[(i, j)], j

    def _mi(self) -> Tensor:
        """Step 2's matrix: MI between every encoded expert layer and every target layer."""
        if self.mi_ is None:
            t0 = time.perf_counter()
            self.mi_ = mi_matrix(
                self.encoded_,
                list(self.target_states_),
                estimator=self.mi_estimator,
                n_components=min(self.mi_components, len(self.texts_) - 2),
                progress=self.progress,
            )
            self.timings_["mi"] = time.perf_counter() - t0
        return self.mi_

    def replan(
        self,
        data: Dataset,
        *,
        pairing: str | None = None,
        n_pairs: int | None = None,
        given_pairs: Sequence[LayerPair] | None = None,
    ) -> SteeringPlan:
        """Steps 2-3 again on the fitted states: ``data`` must hold the fitted texts in the
        same order (its labels may differ: the shuffled-label null); pairing options override
        the estimator's own for this plan only."""
        if not hasattr(self, "texts_"):
            raise RuntimeError("call fit() before replan()")
        if list(data.texts) != self.texts_:
            raise ValueError("replan needs the texts the estimator was fitted on, in that order")
        pairing = self.pairing if pairing is None else pairing
        n_pairs = self.n_pairs if n_pairs is None else n_pairs
        given_pairs = self.given_pairs if given_pairs is None else given_pairs
        y, groups = data.labels, data.groups
        L_E, L_T = len(self.encoded_), self.target_states_.shape[0]
        mi = None if pairing == "given" and given_pairs is not None else self._mi()
        timings = dict(self.timings_)

        t0 = time.perf_counter()
        pairs = select_pairs(
            mi,
            strategy=pairing,
            n_pairs=n_pairs,
            n_expert_layers=L_E,
            n_target_layers=L_T,
            exclude_outer=self.exclude_outer,
            given=given_pairs,
        )
        timings["pairing"] = time.perf_counter() - t0

        # The pairs' own maps (step 2 chose the pairs through the depth-matched maps).
        t0 = time.perf_counter()
        maps, map_quality = {}, {}
        for i, j in pairs:
            a, j_map = self._pair_map(i, j)
            maps[j] = a
            kind = "layer" if a is self.aligners_[i] else "pair"
            map_quality[str(j)] = {"expert_layer": i, "target_layer": j_map, "map": kind}
            map_quality[str(j)].update(_quality(a))
        timings["pair_align"] = time.perf_counter() - t0

        # Step 3: a direction per pair, from the expert's states only.
        t0 = time.perf_counter()
        vectors, stats = {}, {}
        desc = f"vectors ({spec_name(self.estimator)})"
        for i, j in tqdm(pairs, desc=desc, disable=not self.progress):
            est = build(ESTIMATORS, self.estimator, self.seed)
            if self.route == "encoded":
                a = maps[j]
                same = a is self.aligners_[i]  # step 1's map: its encoding is already there
                encoded = self.encoded_[i] if same else a.transform(self.expert_states_[i])
                v = est.fit(encoded, y, groups).direction_
            else:
                direction = est.fit(self.expert_states_[i], y, groups).direction_
                v = maps[j].map_direction(direction)
            vectors[j] = v.float()
            tg_j = self.target_states_[j]
            own = ESTIMATORS.make("mean-diff").fit(tg_j, y, groups).direction_
            stats[str(j)] = {
                "expert_layer": i,
                **{f"expert_{k}": float(val) for k, val in est.stats_.items()},
                # Diagnostics on the target's own states (never used to fit the vector):
                "target_auc": auc(tg_j @ v, y),
                "cos_target_mean_diff": float(torch.dot(v, own)),
            }
        timings["vectors"] = time.perf_counter() - t0
        alphas, norms = _alpha_defaults(self.target_states_, list(vectors), self.alpha_scale)
        config = {**self._params(), "pairing": pairing, "n_pairs": n_pairs}
        config["given_pairs"] = [list(p) for p in given_pairs] if given_pairs else None
        return SteeringPlan(
            vectors=vectors,
            alphas=alphas,
            target=self.target_info_,
            method="expertsteer",
            expert=self.expert_info_,
            pairs=pairs,
            layer_norms=norms,
            mi_matrix=mi,
            config=config,
            provenance={
                "data": data.spec,
                "n_examples": len(self.texts_),
                "data_kind": data.kind,
                "align_data": (
                    "user texts"
                    if self.align_texts is not None
                    else "generic (library text set, disjoint from the data)"
                ),
                "n_align_texts": self.n_align_texts_,
                "n_align_positions": self.n_align_positions_,
                "route": self.route,
                # Per expert layer, its depth-matched map (the one the MI matrix used) ...
                "aligner_quality": self.quality_,
                # ... and per target layer, the map its vector went through.
                "pair_aligner_quality": map_quality,
                "vector_stats": stats,
                "timings_s": {k: round(v, 2) for k, v in timings.items()},
                "library_version": __version__,
            },
        )


def _quality(a: Aligner) -> dict[str, float | str]:
    """An aligner's held-out metrics as JSON values."""
    return {k: v if isinstance(v, str) else float(v) for k, v in a.quality_.items()}


def _check_given(pairs: Sequence[LayerPair] | None, side: int, lm: LoadedModel, role: str):
    """Out-of-range given layers, found as soon as the model is loaded (not after extraction)."""
    if pairs is None:
        return
    bad = []
    for pair in pairs:
        try:
            layer = operator.index(pair[side])
        except (TypeError, IndexError):
            continue  # malformed: select_pairs says so
        if not 0 <= layer < lm.n_layers:
            bad.append(tuple(pair))
    if bad:
        raise ValueError(
            f"given pairs {bad}: {role} layer out of range; {lm.name} has {lm.n_layers} layers "
            f"(0..{lm.n_layers - 1})"
        )


def fit_target_only(
    target: ModelRef,
    data: Dataset,
    *,
    method: str | DirectionEstimator = "mean-diff",
    layers: Sequence[int] | None = None,
    n_layers: int = 4,
    exclude_outer: int = 1,
    position: ReadPosition = "last",
    chat_template: bool = False,
    alpha_scale: float = 0.15,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> SteeringPlan:
    """The baselines: a plan from the target's own states (CAA, RepE-PCA, ITI probe, self-RFM).

    ``method``: a name in :data:`TARGET_METHODS` or a :class:`DirectionEstimator` instance
    (cloned per layer, its hyper-parameters kept); ``seed`` goes to every estimator built from
    a name that takes one."""
    if isinstance(method, str) and method not in TARGET_METHODS:
        raise ValueError(f"method must be one of {tuple(TARGET_METHODS)}, not {method!r}")
    check_dataset(data)
    check_position(position, len(data))
    estimator = TARGET_METHODS[method] if isinstance(method, str) else method
    method_name = method if isinstance(method, str) else spec_name(method)
    t0 = time.perf_counter()

    def run(lm: LoadedModel):
        # The layers are settled before the forward passes: a bad choice costs no extraction.
        n = lm.n_layers
        chosen = (
            [j for _, j in depth_pairs(n, n, n_layers, exclude_outer=exclude_outer)]
            if layers is None
            else list(layers)
        )
        bad = [j for j in chosen if not 0 <= j < n]
        if bad:
            raise ValueError(
                f"layers {bad} are out of range: {lm.name} has {n} layers (0..{n - 1})"
            )
        states = extract(
            lm,
            list(data.texts),
            position=position,
            chat_template=chat_template,
            batch_size=batch_size,
            progress=progress,
        )
        return states, ModelInfo.of(lm), chosen

    states, info, layers = _with_model(target, run)
    vectors, stats = {}, {}
    for j in layers:
        est = build(ESTIMATORS, estimator, seed)
        vectors[j] = est.fit(states[j], data.labels, data.groups).direction_.float()
        stats[str(j)] = {k: float(v) for k, v in est.stats_.items()}
    alphas, norms = _alpha_defaults(states, list(vectors), alpha_scale)
    return SteeringPlan(
        vectors=vectors,
        alphas=alphas,
        target=info,
        method=method_name,
        layer_norms=norms,
        config={
            "method": _spec_json(method),
            "layers": list(layers),
            "position": position,
            "chat_template": chat_template,
            "alpha_scale": alpha_scale,
            "seed": seed,
        },
        provenance={
            "data": data.spec,
            "n_examples": len(data),
            "data_kind": data.kind,
            "vector_stats": stats,
            "library_version": __version__,
            "timings_s": {"total": round(time.perf_counter() - t0, 2)},
        },
    )
