"""Algorithm 1 (paper §3.3) in one function: fit θ₀, align the tasks' weights to the target model, run the FDO
meta-iterations, score every sample with the trained Data Value Network.

    net  = DataValueNetwork(...)                        eq. 13, v_θ = σ(MLP([E_q(q), E_r(h_r), E_d(d), E_a(a)]))
    row  = the candidate static row whose top budget share trains the best target model on the validation sets
                                                        (prior "auto", with a target scorer; else the named row)
    θ₀   = fit_prior(net, that static ranking)          (init "prior"; "residual": v = σ(p_row(x) + MLP(...)) with
                                                         the MLP's output 0 at θ₀, so θ₀ is the row exactly;
                                                         "constant": v ≈ budget everywhere)
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

INITS = ("prior", "residual", "constant")
CLUSTER_SPACES = ("inputs", "embeddings")
# the static rows θ₀ can start from: Table 2's (selection.ABLATIONS), Q+R+A, and the alignment alone (clip_score's
# signal over the deduplicated pool)
PRIOR_ROWS = {**selection.ABLATIONS, "q_r_a": ("q", "r", "a"), "a": ("a",)}
PRIOR_AUTO = "auto"


@dataclass
class Algorithm1Params:
    """What Algorithm 1 is run with besides the reward. `fdo.rate` is the data budget."""

    fdo: FdoParams = field(default_factory=FdoParams)
    # θ₀: "prior" fits v to the static ranking `prior` first (Spearman ≈ 0.95: its top share differs from the row's
    # at the boundary); "residual" adds the row's logits to the network's output, which starts at zero, so θ₀ selects
    # exactly the row's top share and FDO learns a correction to it (a deliberate variant); "constant": v ≈ the
    # budget everywhere
    init: str = "residual"
    # the static row θ₀ starts from (PRIOR_ROWS; "q_r_d" is the paper's three signals), or "auto": each row of
    # `prior_candidates` selects its top budget share, the target model trains on each (task alignment's target,
    # trained_dvn's task_alignment "target"), and the row whose model scores the highest J on the tasks' validation
    # sets is θ₀'s (a deliberate variant: which signals pay differs between pools, see choose_prior). Without a
    # target scorer "auto" takes the first candidate.
    prior: str = PRIOR_AUTO
    # comma-separated PRIOR_ROWS, for prior "auto": every Table 2 row, Q+R+A and the alignment alone
    prior_candidates: str = "q_r_d_a,q_r_a,q_r_d,q_r,q,a"
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
        if self.prior != PRIOR_AUTO and self.prior not in PRIOR_ROWS:
            raise ValueError(f"prior must be {PRIOR_AUTO!r} or one of {tuple(PRIOR_ROWS)}, got {self.prior!r}")
        unknown = [c for c in self.candidates() if c not in PRIOR_ROWS]
        if unknown or not self.candidates():
            raise ValueError(f"prior_candidates must name rows of {tuple(PRIOR_ROWS)} (comma-separated), got "
                             f"{self.prior_candidates!r}")
        rows = self.candidates() if self.prior == PRIOR_AUTO else (self.prior,)
        if self.init != "constant" and not self.alignment_stream and any("a" in PRIOR_ROWS[r] for r in rows):
            raise ValueError(f"prior {self.prior!r} ({', '.join(rows)}) ranks by the alignment a, which the DVN sees "
                             "only with alignment_stream on: switch it on, or set prior 'q_r_d' too (the paper's "
                             "network and θ₀)")
        if self.fdo_cluster_space not in CLUSTER_SPACES:
            raise ValueError(f"fdo_cluster_space must be one of {CLUSTER_SPACES}, got {self.fdo_cluster_space!r}")

    def candidates(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.prior_candidates.split(",") if c.strip())


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
    prior: str | None = None  # the static row θ₀ was fitted to (None: init "constant")
    prior_trials: list[dict] = field(default_factory=list)  # prior "auto": one row per candidate (choose_prior)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def _validation_sizes(val) -> dict[str, int]:
    """Each validation task's item count (0 where unknown)."""
    return {v.name: len(v.image_feats) if v.image_feats is not None else 0 for v in val}


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
    n_val = _validation_sizes(reward.val)  # 0: unknown size
    return [{"task": t.name, "φ_k (task file)": t.weight, "chance": chance[t.name], "Eval_k proxy": proxy_scores[t.name],
             "Eval_k target": target[t.name], "a_k": factors[t.name], "φ_k in J": t.weight * factors[t.name],
             "proxy_at_chance": proxy.at_chance(proxy_scores[t.name], chance[t.name], n_val[t.name])}
            for t in tasks]


def row_label(row: str) -> str:
    return "+".join(s.upper() for s in PRIOR_ROWS[row])


def choose_prior(sig: selection.Signals, tasks, params: Algorithm1Params,
                 target_scores: Callable[[np.ndarray], dict[str, float]] | None,
                 val: list, progress: Callable[[str], None] = lambda m: None,
                 ) -> tuple[str, list[dict], tuple[dict[str, float], np.ndarray] | None]:
    """θ₀'s static row for prior "auto": each of `params.prior_candidates` selects its top budget share of the
    deduplicated pool, the target model trains on it (`target_scores`, the task alignment's scorer: a CLIP from
    scratch, scored on the tasks' validation items, never on their test items), and the row of the highest
    J = Σ_k φ_k·(Eval_k − chance_k) wins (the task file's φ_k; ties go to the earlier candidate). A task counts only
    where at least one candidate's target scores above chance (`proxy.at_chance` over its items in `val`, the
    reward's validation tasks; size unknown: above chance at all): a task the target cannot learn at this budget (the
    demo's digits) would add only its validation noise. Which signals pay differs between pools — where noise is the majority the alignment
    a has to lead, where the pool is clean relevance and diversity matter more — and no fixed sum of standardised
    signals measured best on every pool of the zoo. Returns the row, one report row per candidate, and the
    winner's (target scores, selection mask) for the task alignment, which then needs no training of its own.
    Without a target scorer: the first candidate, no trials. (One target CLIP a row: a second, or a runoff between
    the two best, did not pick better rows on the zoo — benchmarks/row_choice.py, docs/results.md.)"""
    candidates = params.candidates()
    if target_scores is None:
        progress(f"θ₀'s static row: {row_label(candidates[0])}, the first candidate (prior 'auto' without a target "
                 "model to compare the candidates with)")
        return candidates[0], [], None
    results = []
    for row in candidates:
        mask = fdo.top_fraction(sig.static(PRIOR_ROWS[row]), params.fdo.rate)
        results.append((target_scores(mask), mask))
        progress(f"θ₀ candidate {row_label(row)}: target on its top {params.fdo.rate:.0%}: "
                 + ", ".join(f"{t.name} {results[-1][0][t.name]:.3f}" for t in tasks) + " on the validation sets")
    js, counted = candidate_j(tasks, [scores for scores, _ in results], proxy.chance_levels(val), _validation_sizes(val))
    trials = []
    for row, (scores, _), j in zip(candidates, results, js):
        trials.append({"row": row, "signals": row_label(row), "J target (validation)": j,
                       **{f"Eval_k {t.name}": float(scores[t.name]) for t in tasks},
                       "tasks counted": ", ".join(t.name for t in counted)})
    best = best_candidate(js)
    for i, t in enumerate(trials):
        t["chosen"] = i == best
    left = [t.name for t in tasks if t not in counted]
    progress(f"θ₀'s static row: {trials[best]['signals']} (J over chance "
             + ", ".join(f"{t['signals']} {t['J target (validation)']:.4f}" for t in trials)
             + (f"; {', '.join(left)} left out: the target stays at chance on it for every candidate" if left else "")
             + ")")
    return trials[best]["row"], trials, results[best]


def candidate_j(tasks, scores: list[dict[str, float]], chance: dict[str, float], n_val: dict[str, int],
                ) -> tuple[list[float], list]:
    """J = Σ_k φ_k·(Eval_k − chance_k) of each candidate's target scores (`scores`, Eval_k per task on the
    validation sets, whose chance levels and item counts — 0: unknown — are `chance` and `n_val`), over the tasks
    at least one candidate's target learned (above chance beyond two binomial standard errors of its validation
    items; all tasks when none did). Returns (J per candidate, the tasks counted)."""
    def learned(k: str, score: float) -> bool:
        n = n_val.get(k, 0)
        return score > chance[k] if n <= 0 else not proxy.at_chance(score, chance[k], n)

    counted = [t for t in tasks if any(learned(t.name, s[t.name]) for s in scores)] or list(tasks)
    return [float(sum(t.weight * (s[t.name] - chance[t.name]) for t in counted)) for s in scores], counted


def best_candidate(js: list[float]) -> int:
    """The index of the highest J; ties go to the earlier candidate."""
    return max(range(len(js)), key=lambda i: (js[i], -i))


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
    "embeddings"). `target_scores(mask)`: Eval_k of the target model trained on `mask`'s samples, for prior
    "auto" (`choose_prior`) and the task alignment on θ₀'s selection (None: φ_k as in the task file, prior "auto"
    takes the first candidate)."""
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
    residual = params.init == "residual"
    if params.fdo_cluster_space == "inputs":
        clusters = fdo.input_space_groups(inputs, params.fdo_clusters, seed=params.seed)
    else:
        if joint is None:
            raise ValueError("fdo_cluster_space 'embeddings' needs the samples' joint vectors")
        clusters = kmeans_clusters(joint, params.fdo_clusters, seed=params.seed)
    torch.manual_seed(params.seed)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=len(tasks), embed_dim=params.embed_dim,
                                             hidden_dim=params.hidden_dim, init_rate=params.fdo.rate,
                                             alignment_stream=params.alignment_stream, prior_skip=residual))
    prior_loss = prior_rho = row = chosen = None
    trials: list[dict] = []
    if params.init != "constant":
        row = params.prior
        if row == PRIOR_AUTO:
            # a target scorer comes with the head proxy, whose reward holds the tasks' validation sets
            row, trials, chosen = choose_prior(sig, tasks, params, target_scores,
                                               reward.val if target_scores is not None else [], progress)
        prior = sig.static(PRIOR_ROWS[row])
        if residual:  # the network's streams see (q, h_r, log d[, a]); the row's logits enter after the fusion MLP
            logits = torch.as_tensor(dvn.prior_logits(prior, params.fdo.rate).astype(np.float32))
            inputs = (*inputs, None, logits) if len(inputs) == 3 else (*inputs, logits)
        else:
            prior_loss = dvn.fit_prior(net, inputs, prior, seed=params.seed)
    with torch.no_grad():
        v0 = net(*inputs).double().numpy()
    if row is not None:
        prior_rho = spearman(v0, prior)
        progress(f"θ₀ is the static {row_label(row)} ranking itself (residual: v = σ(p_row + MLP), the MLP's output 0 at "
                 f"θ₀; Spearman {prior_rho:.3f})" if residual else
                 f"θ₀ fitted to the static {row_label(row)} ranking (BCE {prior_loss:.4f}, Spearman {prior_rho:.3f})")
    alignment = []
    if target_scores is not None:
        if chosen is not None:  # the chosen row's selection trained the target already (prior "auto")
            target, mask = chosen
        else:  # θ₀'s own top share
            mask = fdo.top_fraction(v0, params.fdo.rate)
            target = target_scores(mask)
        alignment = align_tasks(tasks, reward, target, mask)
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
                            j_last, prior_loss, prior_rho, time.perf_counter() - t0, row, trials)
