"""Algorithm 1 (paper §3.3) in one function: fit θ₀, align the tasks' weights to the target model, run the FDO
meta-iterations, score every sample with the trained Data Value Network.

    net  = DataValueNetwork(...)                        eq. 13, v_θ = σ(MLP([E_q(q), E_r(h_r), E_d(d), E_a(a)]))
    θ₀   = fit_prior(net, static Q+R+D+A ranking)       (init "prior"; "constant": v ≈ budget everywhere)
    φ_k ← φ_k · a_k                                     (task alignment, when a target scorer is given)
    for t in 1..T:  S ~ Bernoulli(v) at the budget;  J(S) (eq. 14-15);  g_C by finite differences (eq. 16);
                    Adam step on the eq. 17 policy loss                       (fdo.train_dvn)
    v(x) for every sample;  J of the top budget share by v
    (keep_best: the θ_t of the highest J(top), θ₀ included, is returned — a deliberate variant, see FdoParams)

The reward (a head-proxy ensemble or a full CLIP proxy) and the target scorer are passed in, so this module
needs neither the training harness nor any storage: it is arrays and torch modules in, arrays and a
module out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tads_assets.core.method import dvn, fdo, proxy, selection
from tads_assets.core.method.fdo import FdoParams
from tads_assets.core.vectors import kmeans_clusters

INITS = ("prior", "constant")
CLUSTER_SPACES = ("inputs", "embeddings")


@dataclass
class Algorithm1Params:
    """What Algorithm 1 is run with besides the reward. `fdo.rate` is the data budget."""

    fdo: FdoParams = field(default_factory=FdoParams)
    init: str = "prior"  # θ₀: "prior" fits v to the static ranking `prior` first; "constant": v ≈ the budget everywhere
    prior: str = "q_r_d_a"  # the static row θ₀ starts from (selection.ABLATIONS); "q_r_d" is the paper's three signals
    # E_a(a) in the DVN (a deliberate variant of eq. 13); False with prior "q_r_d": the paper's network and θ₀
    alignment_stream: bool = True
    fdo_clusters: int = 20  # groups perturbed by eq. 16 (k-means; coarser than the diversity clusters)
    fdo_cluster_space: str = "inputs"  # "inputs": k-means over the DVN's inputs [q, h_r, log d(, a)]; "embeddings": [z_I; z_T]
    embed_dim: int = dvn.DvnConfig.embed_dim
    hidden_dim: int = dvn.DvnConfig.hidden_dim
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.fdo.rate, (int, float)) or not 0 < self.fdo.rate <= 1:
            raise ValueError(f"fdo.rate is the data budget and must lie in (0, 1], got {self.fdo.rate!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.prior not in selection.ABLATIONS:
            raise ValueError(f"prior must be one of {tuple(selection.ABLATIONS)}, got {self.prior!r}")
        if self.init == "prior" and "a" in selection.ABLATIONS[self.prior] and not self.alignment_stream:
            raise ValueError(f"prior {self.prior!r} ranks by the alignment a, which the DVN sees only with "
                             "alignment_stream on: switch it on, or set prior 'q_r_d' too (the paper's network and θ₀)")
        if self.fdo_cluster_space not in CLUSTER_SPACES:
            raise ValueError(f"fdo_cluster_space must be one of {CLUSTER_SPACES}, got {self.fdo_cluster_space!r}")


@dataclass
class Algorithm1Result:
    net: dvn.DataValueNetwork
    v: np.ndarray  # v(x) after the last update, one per sample
    v0: np.ndarray  # v(x) of θ₀
    clusters: np.ndarray  # the FDO groups
    log_d_stats: tuple[float, float]
    alignment_stats: tuple[float, float] | None  # (mean, std) of a the E_a stream was standardised with
    history: list[dict]  # one entry per meta-iteration (fdo.train_dvn)
    alignment: list[dict]  # per task: φ_k, chance, proxy and target Eval_k, a_k (empty without a target)
    reward_top_final: float  # J(top) of the returned iterate
    metrics_top_final: dict[str, float]
    returned_iterate: int  # t of the θ_t returned (0: θ₀; meta_iterations: the last update), see FdoParams.keep_best
    reward_top_last: float  # J(top) after the last update
    prior_loss: float | None
    prior_spearman: float | None
    seconds: float


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def align_tasks(tasks, reward, target: dict[str, float], mask: np.ndarray) -> list[dict]:
    """Scale each φ_k of the reward by a_k (`proxy.alignment_factors`): how much of what the proxy learns on task
    k from `mask`'s samples the target model learned from the same samples (`target`: its Eval_k). Raises when
    no task is left to reward a selection."""
    _, proxy_scores = reward.reward(mask)
    chance = proxy.chance_levels(reward.val)
    factors = proxy.alignment_factors(target, proxy_scores, chance)
    if not any(t.weight * factors[t.name] > 0 for t in tasks):
        raise ValueError(f"the target model stays at chance on every task ({target}), so no task can reward a "
                         "selection: give the target more samples seen or switch task alignment off")
    reward.reweight({t.name: t.weight * factors[t.name] for t in tasks})
    n_val = {v.name: len(v.image_feats) if v.image_feats is not None else 0 for v in reward.val}  # 0: unknown size
    return [{"task": t.name, "φ_k (task file)": t.weight, "chance": chance[t.name], "Eval_k proxy": proxy_scores[t.name],
             "Eval_k target": target[t.name], "a_k": factors[t.name], "φ_k in J": t.weight * factors[t.name],
             "proxy_at_chance": proxy.at_chance(proxy_scores[t.name], chance[t.name], n_val[t.name])}
            for t in tasks]


def check_tasks(sig: selection.Signals, tasks) -> None:
    """The relevance signals must be those of this task set, in its order."""
    if [t.name for t in tasks] != sig.task_names:
        raise ValueError(f"relevance_vectors were computed for tasks {sig.task_names}, the task set has "
                         f"{[t.name for t in tasks]}: rematerialize relevance_vectors")


def run_algorithm1(sig: selection.Signals, tasks, reward, params: Algorithm1Params,
                   joint: np.ndarray | None = None,
                   target_scores: Callable[[np.ndarray], dict[str, float]] | None = None,
                   progress: Callable[[str], None] = lambda m: None) -> Algorithm1Result:
    """Train the DVN on the deduplicated pool's signals `sig` against `reward` (mask → (J, per-task Eval_k),
    with `.val`, `.reweight`, `.n_adaptations`). `joint`: the samples' [z_I; z_T] (fdo_cluster_space
    "embeddings"). `target_scores(mask)`: Eval_k of the target model trained on `mask`'s samples, for task
    alignment on θ₀'s selection (None: φ_k as in the task file)."""
    t0 = time.perf_counter()
    check_tasks(sig, tasks)
    stats = dvn.log_d_stats(sig.d)
    a_stats = None
    if params.alignment_stream:
        if sig.a is None:
            raise ValueError("the DVN's alignment stream needs the pairs' alignment (Signals.a, the held-out pair "
                             "cosine of pool_embeddings): load it, or set alignment_stream False")
        a_stats = dvn.value_stats(sig.a)
    inputs = dvn.standardise_inputs(sig.q, sig.h_r, sig.d, stats, sig.a if params.alignment_stream else None, a_stats)
    if params.fdo_cluster_space == "inputs":
        clusters = fdo.input_space_groups(inputs, params.fdo_clusters, seed=params.seed)
    else:
        if joint is None:
            raise ValueError("fdo_cluster_space 'embeddings' needs the samples' joint vectors")
        clusters = kmeans_clusters(joint, params.fdo_clusters, seed=params.seed)
    torch.manual_seed(params.seed)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=len(tasks), embed_dim=params.embed_dim,
                                             hidden_dim=params.hidden_dim, init_rate=params.fdo.rate,
                                             alignment_stream=params.alignment_stream))
    prior_loss = prior_rho = None
    prior_name = "+".join(s.upper() for s in selection.ABLATIONS[params.prior])
    if params.init == "prior":
        prior = sig.static(selection.ABLATIONS[params.prior])
        prior_loss = dvn.fit_prior(net, inputs, prior, seed=params.seed)
    with torch.no_grad():
        v0 = net(*inputs).double().numpy()
    if prior_loss is not None:
        prior_rho = spearman(v0, prior)
        progress(f"θ₀ fitted to the static {prior_name} ranking (BCE {prior_loss:.4f}, Spearman {prior_rho:.3f})")
    alignment = []
    if target_scores is not None:
        mask = fdo.top_fraction(v0, params.fdo.rate)
        alignment = align_tasks(tasks, reward, target_scores(mask), mask)
        progress("task alignment: " + ", ".join(
            f"{r['task']} proxy {r['Eval_k proxy']:.3f} target {r['Eval_k target']:.3f} chance {r['chance']:.3f} "
            f"→ a_k {r['a_k']:.2f}" for r in alignment))
    progress(f"{len(sig.uids)} samples, {len(np.unique(clusters))} FDO clusters, {len(tasks)} tasks")
    best: dict = {}
    history = fdo.train_dvn(net, inputs, clusters, reward.reward, params.fdo, progress,
                            getattr(reward, "reward_many", None), best if params.fdo.keep_best else None)
    with torch.no_grad():
        v = net(*inputs).double().numpy()
    j_final, metrics_final = reward.reward(fdo.top_fraction(v, params.fdo.rate))
    returned, j_last = params.fdo.meta_iterations, j_final
    if best and best["reward_top"] > j_final:  # an earlier iterate's selection scored higher on the validation sets
        net.load_state_dict(best["state"])
        with torch.no_grad():
            v = net(*inputs).double().numpy()
        returned, j_final, metrics_final = best["iteration"], best["reward_top"], best["metrics_top"]
    progress(f"returning θ_{returned} (J(top) {j_final:.4f}; θ_{params.fdo.meta_iterations} is the last update)")
    return Algorithm1Result(net, v, v0, clusters, stats, a_stats, history, alignment, j_final, metrics_final, returned,
                            j_last, prior_loss, prior_rho, time.perf_counter() - t0)
