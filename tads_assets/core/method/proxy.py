"""The proxy learner of Algorithm 1 in `head` mode (the CPU default): frozen image and text features with
trainable projection heads, adapted on a selected subset S(θ) by InfoNCE (eq. 14) and scored on the tasks'
*validation* sets (eq. 15).

One adaptation is a fixed number of steps from a fixed, seeded initialisation, so the reward depends
only on which samples were selected (equal subsets give equal rewards). Batches are common random
numbers too: every pool sample holds a fixed random key per step, and a step's batch is the selected
samples with the smallest keys. Adding a few samples to S(θ) therefore changes only the batch slots
they win, instead of reshuffling every batch — without that, the finite differences of eq. 16 measure
the luck of a new shuffle, not the effect of a cluster. `full` mode (open_clip fine-tuning, the paper's setting)
belongs on a GPU: `tads_assets.core.harness.clip_proxy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tads_assets.core.io.eval_sets import read_eval_set
from tads_assets.core.method.encoder import HeadsConfig, ProjectionHeads
from tads_assets.core.metrics import (caption_groups, eval_k, named_items, retrieval_chance, score_classification,
                                      score_retrieval)


@dataclass
class ProxyParams:
    """Defaults of the head proxy (the Dagster Config class takes its defaults from here)."""

    embed_dim: int = 64  # 64, not 128: 0.6x the time per meta-iteration, subsets ranked alike (docs/method.md step 3)
    hidden_dim: int = 0  # 0: linear heads
    steps: int = 60  # InfoNCE steps per adaptation, whatever the subset size (a fixed budget)
    batch_size: int = 256
    lr: float = 3e-3
    # each tower's features reduced to their top principal components over the pool before the heads (0: the
    # full 1280 + 384 features); see `FeatureReduction`
    feature_dims: int = 256
    seed: int = 0


@dataclass
class ValTask:
    """A task's validation set as frozen features: images, and either class labels with the prompt features
    (class-major: class 0's templates first) or the paired caption features and the captions (None: all distinct;
    retrieval hits by caption identity, `metrics.score_retrieval`)."""

    name: str
    kind: str
    weight: float
    image_feats: np.ndarray
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prompt_feats: np.ndarray | None = None
    n_classes: int = 0
    caption_feats: np.ndarray | None = None
    captions: list[str] | None = None


@dataclass
class FeatureReduction:
    """A fixed linear map of one tower's features to `dims` coordinates: each row standardised across its features
    (the heads' LayerNorm without its affine part), centred by the pool's mean and projected onto the pool's top
    `dims` principal directions. The proxy's linear heads then learn on these coordinates: a head restricted to
    the subspace where the pool's features vary most, at dims/D of the cost per step."""

    mean: np.ndarray  # (D,) pool mean of the standardised features
    basis: np.ndarray  # (D, dims) orthonormal principal directions, by decreasing variance
    explained: float  # share of the standardised features' variance the basis keeps

    @classmethod
    def fit(cls, feats: np.ndarray, dims: int) -> "FeatureReduction":
        x = _standardise(np.asarray(feats, np.float64))
        mean = x.mean(axis=0)
        cov = np.cov(x - mean, rowvar=False)
        values, vectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(values)[::-1][:dims]
        explained = float(values[order].sum() / max(values.sum(), 1e-12))
        return cls(mean.astype(np.float32), vectors[:, order].astype(np.float32), explained)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return ((_standardise(np.asarray(feats, np.float32)) - self.mean) @ self.basis).astype(np.float32)


def _standardise(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + eps)


def reduced_features(image_feats: np.ndarray, text_feats: np.ndarray, val_tasks: list[ValTask], dims: int
                     ) -> tuple[np.ndarray, np.ndarray, list[ValTask], dict[str, float]]:
    """The pool's and the validation sets' features through each tower's `FeatureReduction` (fitted on the pool;
    a tower with at most `dims` features is left as it is), and the share of variance each reduction keeps."""
    from dataclasses import replace

    kept = {}

    def fitted(name: str, feats: np.ndarray):
        if dims <= 0 or feats.shape[1] <= dims:
            return lambda x: x
        red = FeatureReduction.fit(feats, dims)
        kept[name] = red.explained
        return red

    ri, rt = fitted("image", image_feats), fitted("text", text_feats)
    val = [replace(t, image_feats=ri(t.image_feats),
                   prompt_feats=None if t.prompt_feats is None else rt(t.prompt_feats),
                   caption_feats=None if t.caption_feats is None else rt(t.caption_feats)) for t in val_tasks]
    return ri(image_feats), rt(text_feats), val, kept


class HeadProxy:
    """adapt(mask) → heads; reward(mask) → J and the per-task metrics."""

    def __init__(self, image_feats: np.ndarray, text_feats: np.ndarray, val_tasks: list[ValTask],
                 params: ProxyParams | None = None, device: str = "cpu"):
        if len(image_feats) != len(text_feats):
            raise ValueError(f"{len(image_feats)} image features but {len(text_feats)} text features")
        self.params = params or ProxyParams()
        self.device = device
        image_feats, text_feats, val_tasks, self.variance_kept = reduced_features(
            image_feats, text_feats, val_tasks, self.params.feature_dims)
        self.xi = torch.as_tensor(np.asarray(image_feats, np.float32), device=device)
        self.xt = torch.as_tensor(np.asarray(text_feats, np.float32), device=device)
        self.val = val_tasks
        self.n_adaptations = 0
        self._normalised: tuple[torch.Tensor, torch.Tensor] | None = None
        gen = torch.Generator().manual_seed(self.params.seed)
        self.keys = torch.rand(self.params.steps, len(self.xi), generator=gen).to(device)  # batch priority per step

    def adapt(self, mask: np.ndarray) -> ProjectionHeads:
        """Eq. 14: ω*(θ) = argmin_ω E_{x∈S(θ)} L_InfoNCE(x; ω), approximated by `steps` Adam steps."""
        return self.adapt_many([mask])[0]

    def adapt_many(self, masks: Sequence[np.ndarray]) -> list[ProjectionHeads]:
        """`adapt` of every mask, as one batched computation: M copies of the heads from the same seeded
        initialisation, stacked along a leading axis (`torch.func.stack_module_state`) and trained together
        (`_stacked_head`: batched matrix products), with one Adam over the stacked tensors. Adam is elementwise
        and the members share no parameter, so member m follows exactly the trajectory `adapt(masks[m])`
        would alone (up to float summation order); each member's batches are its own mask's smallest keys
        (the common random numbers). Members are grouped by batch size (min(batch_size, |S|))."""
        out: list[ProjectionHeads | None] = [None] * len(masks)
        for members, params in self._adapt_stacked(masks):
            for member, m in enumerate(members):
                heads = self._fresh_heads()
                heads.load_state_dict({k: v[member] for k, v in params.items()})
                out[m] = heads.eval()
        return out

    def _adapt_stacked(self, masks: Sequence[np.ndarray]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """The adaptations of `adapt_many` as stacked parameters: per batch-size group, the masks' positions and
        the group's (M, ...) parameter tensors (detached)."""
        p = self.params
        selected = torch.as_tensor(np.stack([np.asarray(m, bool) for m in masks]), device=self.device)
        n_sel = selected.sum(dim=1).tolist()
        if min(n_sel) < 2:
            raise ValueError(f"a selected subset has {min(n_sel)} samples; the proxy needs at least 2")
        groups = []
        for bs in sorted({min(p.batch_size, n) for n in n_sel}):
            members = [m for m, n in enumerate(n_sel) if min(p.batch_size, n) == bs]
            groups.append((members, self._train_stacked(selected[members], bs)))
        self.n_adaptations += len(masks)
        return groups

    def _fresh_heads(self) -> ProjectionHeads:
        torch.manual_seed(self.params.seed)
        return ProjectionHeads(HeadsConfig(self.params.embed_dim, self.params.hidden_dim),
                               self.xi.shape[1], self.xt.shape[1]).to(self.device)

    def _train_stacked(self, selected: torch.Tensor, bs: int) -> dict[str, torch.Tensor]:
        from torch.func import stack_module_state

        p, n_members = self.params, len(selected)
        base = self._fresh_heads()
        params, _ = stack_module_state([base] * n_members)  # copies: (M, ...) leaves that require grad
        fused = self.device.split(":")[0] in ("cpu", "cuda") or None  # one kernel for all M members' tensors
        opt = torch.optim.Adam(list(params.values()), lr=p.lr, fused=fused)
        xi_hat, xt_hat = self._normalised_pool(base)
        for step in range(p.steps):
            idx = torch.topk(self.keys[step].expand_as(selected).masked_fill(~selected, 2.0), bs, dim=1,
                             largest=False).indices.flatten()
            # index_select of the flattened batch rows: 4x faster than x[idx] with a 2-D index (measured)
            zi = _stacked_head(params, "image", xi_hat.index_select(0, idx).view(n_members, bs, -1))
            zt = _stacked_head(params, "text", xt_hat.index_select(0, idx).view(n_members, bs, -1))
            loss = _StackedInfoNCE.apply(zi, zt, params["logit_scale"].exp().clamp(max=100.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return {k: v.detach() for k, v in params.items()}

    def _normalised_pool(self, heads: ProjectionHeads) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool's features through each head's LayerNorm without its affine part (computed once)."""
        if self._normalised is None:
            self._normalised = tuple(nn.functional.layer_norm(x, x.shape[1:], eps=head[0].eps)
                                     for x, head in ((self.xi, heads.image), (self.xt, heads.text)))
        return self._normalised

    @torch.no_grad()
    def evaluate(self, heads: ProjectionHeads) -> dict[str, float]:
        """Eval_k of the adapted heads on each validation set (see `evaluate_embeddings`)."""
        def embed(fn):
            return lambda x: fn(torch.as_tensor(np.asarray(x, np.float32), device=self.device)).cpu().numpy()

        return evaluate_embeddings(self.val, embed(heads.embed_images), embed(heads.embed_texts))

    def reward(self, mask: np.ndarray) -> tuple[float, dict[str, float]]:
        """Eq. 15: J = Σ_k φ_k · Eval_k(ω*(S))."""
        return self.reward_many([mask])[0]

    def reward_many(self, masks: Sequence[np.ndarray]) -> list[tuple[float, dict[str, float]]]:
        """`reward` of every mask, the adaptations batched (`adapt_many`) and so is their evaluation
        (`_evaluate_stacked`)."""
        out: list[tuple[float, dict[str, float]] | None] = [None] * len(masks)
        for members, params in self._adapt_stacked(masks):
            for m, metrics in zip(members, self._evaluate_stacked(params)):
                out[m] = (float(sum(t.weight * metrics[t.name] for t in self.val)), metrics)
        return out

    @torch.no_grad()
    def _evaluate_stacked(self, params: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """`evaluate` of M stacked members at once: each validation set's features through every member's heads
        in one batched product, and each task's Eval_k for all members from (M, n, ·) similarity tensors (the
        same quantities `evaluate_embeddings` scores one head at a time; 22 members took 0.6 s one by one)."""
        base = self._fresh_heads()
        eps_i, eps_t = base.image[0].eps, base.text[0].eps

        def embed(name: str, feats: np.ndarray, eps: float) -> torch.Tensor:
            x = torch.as_tensor(np.asarray(feats, np.float32), device=self.device)
            return _stacked_head(params, name, nn.functional.layer_norm(x, x.shape[1:], eps=eps))

        per_task = {}
        for t in self.val:
            img = embed("image", t.image_feats, eps_i)  # (M, n, d), unit rows
            if t.kind == "classification":
                protos = nn.functional.normalize(embed("text", t.prompt_feats, eps_t).unflatten(
                    1, (t.n_classes, -1)).mean(dim=2), dim=-1)  # (M, classes, d): class_prototypes
                hit = torch.bmm(img, protos.transpose(1, 2)).argmax(dim=2).cpu() == torch.as_tensor(t.labels)
                per_task[t.name] = hit.double().mean(dim=1)  # top-1
            else:  # score_retrieval's R@1: the distinct captions, hits by caption identity
                group, first = caption_groups(t.captions, len(t.image_feats))
                sims = torch.bmm(img, embed("text", t.caption_feats[first], eps_t).transpose(1, 2))  # (M, n, g)
                hit = torch.as_tensor(group, device=self.device)[:, None] == torch.arange(len(first), device=self.device)
                own = sims.masked_fill(~hit, -torch.inf)
                i2t = ((sims > own.amax(dim=2, keepdim=True)).sum(dim=2) < 1).double().mean(dim=1)  # image -> text
                t2i = ((sims > own.amax(dim=1, keepdim=True)).sum(dim=1) < 1).double().mean(dim=1)  # text -> image
                per_task[t.name] = 0.5 * (i2t + t2i).cpu()
        return [{name: float(v[m]) for name, v in per_task.items()} for m in range(len(params["logit_scale"]))]


class _StackedInfoNCE(torch.autograd.Function):
    """Σ_m of the symmetric InfoNCE (eq. 14, CLIP's loss) of M stacked members, (M, B, d) unit embeddings and (M,)
    temperatures -> the sum over members of the mean over the batch, with its gradient written out: for logits
    L = s·z_I z_Tᵀ, ∂/∂L = (softmax_rows(L) + softmax_cols(L) − 2I) / 2B, from torch's fused softmax kernels.
    Autograd through cross_entropy twice (a transposed copy, log_softmax and its backward in each direction, the
    scale's product kept for its gradient) took 1.8x as long on 22×256×256 logits, and logsumexp/exp forms
    2-10x as long as the softmax kernels once large scales push exp(L − lse) into denormals (measured); the value
    and gradients agree to float precision (tests/core/test_proxy.py)."""

    @staticmethod
    def forward(ctx, zi: torch.Tensor, zt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        logits = torch.bmm(zi, zt.transpose(1, 2)).mul_(scale[:, None, None])
        matched = (torch.log_softmax(logits, dim=2).diagonal(dim1=1, dim2=2).sum()
                   + torch.log_softmax(logits, dim=1).diagonal(dim1=1, dim2=2).sum())
        ctx.save_for_backward(zi, zt, scale, logits)
        return -0.5 * matched / logits.shape[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        zi, zt, scale, logits = ctx.saved_tensors
        g = torch.softmax(logits, dim=2).add_(torch.softmax(logits, dim=1))
        g.diagonal(dim1=1, dim2=2).sub_(2.0)
        g.mul_(grad * 0.5 / logits.shape[1])  # ∂loss/∂L
        d_scale = (g * logits).sum(dim=(1, 2)) / scale  # L = s·raw: ∂/∂s = Σ ∂/∂L · raw
        g.mul_(scale[:, None, None])  # ∂loss/∂raw
        return torch.bmm(g, zt), torch.bmm(g.transpose(1, 2), zi), d_scale


def _stacked_head(params: dict[str, torch.Tensor], name: str, x_hat: torch.Tensor) -> torch.Tensor:
    """ProjectionHeads' head `name` (LayerNorm, Linear[, GELU, Linear]) for M stacked members at once: (M, B, D)
    inputs already normalised by the LayerNorm without its affine part (or (B, D), the same inputs for every member)
    -> (M, B, d) L2-normalised embeddings. The affine part is folded into the first Linear, W(γ⊙x̂ + β) + b =
    x̂(W·diag γ)ᵀ + (Wβ + b), so the only work on the (M, B, D) batch is one batched matrix product forwards and one
    backwards (the same function as the module's forward, up to float summation order)."""
    gamma, beta = params[f"{name}.0.weight"], params[f"{name}.0.bias"]
    w, b = params[f"{name}.1.weight"], params[f"{name}.1.bias"]  # (M, out, D), (M, out)
    bias = torch.einsum("mod,md->mo", w, beta) + b
    w_eff = (w * gamma[:, None, :]).transpose(1, 2)
    h = (torch.baddbmm(bias[:, None, :], x_hat, w_eff) if x_hat.dim() == 3
         else torch.matmul(x_hat, w_eff) + bias[:, None, :])
    if f"{name}.3.weight" in params:  # the MLP head: GELU, then the second Linear
        h = torch.baddbmm(params[f"{name}.3.bias"][:, None, :], nn.functional.gelu(h),
                          params[f"{name}.3.weight"].transpose(1, 2))
    return nn.functional.normalize(h, dim=-1)


class ProxyEnsemble:
    """J averaged over `repeats` head proxies that differ only in their seed (initialisation and batch keys).
    One adaptation's J carries a few points of seed noise — as much as the effect of one cluster — so an
    average over seeds is what makes the finite differences of eq. 16 readable; every proxy keeps its
    common random numbers, so equal subsets still give equal rewards."""

    def __init__(self, image_feats: np.ndarray, text_feats: np.ndarray, val_tasks: list[ValTask],
                 params: ProxyParams | None = None, repeats: int = 1, device: str = "cpu"):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        params = params or ProxyParams()
        self.proxies = [HeadProxy(image_feats, text_feats, val_tasks,
                                  ProxyParams(**{**params.__dict__, "seed": params.seed + k}), device)
                        for k in range(repeats)]

    @property
    def n_adaptations(self) -> int:
        return sum(p.n_adaptations for p in self.proxies)

    @property
    def val(self) -> list[ValTask]:
        return self.proxies[0].val

    @property
    def variance_kept(self) -> dict[str, float]:
        """Per tower, the share of its features' variance the proxy's `FeatureReduction` keeps (empty: full width)."""
        return self.proxies[0].variance_kept

    def reweight(self, weights: dict[str, float]) -> None:
        """Replace the φ_k of eq. 15 (by task name) in every proxy."""
        from dataclasses import replace

        for p in self.proxies:
            p.val = [replace(t, weight=float(weights[t.name])) for t in p.val]

    def reward(self, mask: np.ndarray) -> tuple[float, dict[str, float]]:
        return self.reward_many([mask])[0]

    def reward_many(self, masks: Sequence[np.ndarray]) -> list[tuple[float, dict[str, float]]]:
        per_proxy = [p.reward_many(masks) for p in self.proxies]  # each proxy batches the masks
        out = []
        for results in zip(*per_proxy):
            metrics = {k: float(np.mean([m[k] for _, m in results])) for k in results[0][1]}
            out.append((float(np.mean([j for j, _ in results])), metrics))
        return out


def evaluate_embeddings(val: list[ValTask], embed_images, embed_texts) -> dict[str, float]:
    """Eval_k on each validation set from its stored features mapped by `embed_images`/`embed_texts`
    (arrays → arrays; identity for features that already are a CLIP's embeddings), scored the way the
    benchmark scores the test sets (`eval_k`: top-1, or the mean of the two R@1)."""
    out = {}
    for t in val:
        img = embed_images(t.image_feats)
        if t.kind == "classification":
            scores = score_classification(t.name, img, t.labels, embed_texts(t.prompt_feats), t.n_classes,
                                                    len(t.prompt_feats) // t.n_classes)
        else:
            scores = score_retrieval(t.name, img, embed_texts(t.caption_feats), t.captions)
        out[t.name] = eval_k(scores)
    return out


def chance_levels(val: list[ValTask]) -> dict[str, float]:
    """Eval_k of a guess: 1/classes (top-1), the mean of the two R@1 chance levels (`metrics.retrieval_chance`:
    1/items when all captions are distinct)."""
    def retrieval(t: ValTask) -> float:
        chance = retrieval_chance(caption_groups(t.captions, len(t.image_feats))[0], 1)
        return 0.5 * (chance["i2t_r1"] + chance["t2i_r1"])

    return {t.name: 1.0 / t.n_classes if t.kind == "classification" else retrieval(t) for t in val}


def at_chance(score: float, chance: float, n: int) -> bool:
    """Whether a validation score is indistinguishable from a guess: within two binomial standard errors of chance
    over the task's n validation items."""
    return score - chance <= 2.0 * float(np.sqrt(max(chance * (1.0 - chance), 1e-12) / max(n, 1)))


def alignment_factors(target: dict[str, float], proxy_scores: dict[str, float], chance: dict[str, float]) -> dict[str, float]:
    """How much of what the head proxy learns on task k the target model learns too, at the target's budget:
    a_k = clip((Eval_k(target) − chance_k) / (Eval_k(proxy) − chance_k), 0, 1), both trained on the same subset.
    The head proxy stands on pretrained towers, so it can learn a task (on the demo: handwritten digits, top-1
    0.37 from 3k samples) that a CLIP trained from scratch at the benchmark's budget stays at chance on
    (every Table 1 row); unweighted, eq. 15 then pays the DVN for spending the budget on that task's data,
    which buys the target nothing. a_k = 0 where the proxy itself is at or below chance."""
    out = {}
    for k, c in chance.items():
        gap = proxy_scores[k] - c
        out[k] = float(np.clip((target[k] - c) / gap, 0.0, 1.0)) if gap > 0 else 0.0
    return out


def validation_tasks(tasks, encode_images, encode_texts, split: str = "validation", max_items: int = 1000,
                     seed: int = 0, unnamed: Mapping[str, Sequence[str]] | None = None) -> list[ValTask]:
    """Each task's held-out set of `split` as the proxy's frozen features (`encode_images`/`encode_texts`: the
    builtin encoder's FrozenTowers features, or the open_clip encoder's embeddings — whatever the pool's
    proxy features are), at most `max_items` per task (a seeded sample), encoded once per DVN training.
    `unnamed` (task → class names, `benchmark.unnamed_classes`): a classification task is scored over its other
    classes only, their items and prompts, as the benchmark scores its test set — unless fewer than two classes
    would be left (the benchmark then has no metric for the task; it is scored over all its classes here)."""
    out = []
    for t in tasks:
        es = read_eval_set(t.sets[split], t.classes)
        named, eligible = list(range(len(t.classes))), np.arange(len(es.images))
        if t.kind == "classification" and (unnamed or {}).get(t.name):
            cut = named_items(t.classes, es.labels, unnamed[t.name])
            named, eligible = cut if len(cut[0]) >= 2 else (named, eligible)
        keep = eligible[np.sort(np.random.default_rng(seed).permutation(len(eligible))[:max_items])]
        images = [es.images[i] for i in keep]
        image_feats = encode_images(images)
        if t.kind == "classification":
            prompts = [tpl.format(t.classes[i]) for i in named for tpl in t.templates]
            out.append(ValTask(t.name, t.kind, t.weight, image_feats, labels=np.searchsorted(named, es.labels[keep]),
                               prompt_feats=encode_texts(prompts), n_classes=len(named)))
        else:
            captions = [es.captions[i] for i in keep]
            out.append(ValTask(t.name, t.kind, t.weight, image_feats, caption_feats=encode_texts(captions),
                               captions=captions))
    return out
