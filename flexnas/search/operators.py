"""pymoo operators that respect segments: every genome they return is valid and canonical.

The space is read from ``problem.space`` (a ``SearchSpace``), as pymoo operators read
bounds from the problem.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.sampling import Sampling
from pymoo.core.variable import get

from flexnas.metrics.macs import MacCounter
from flexnas.plan.space import SearchSpace


def _space(problem) -> SearchSpace:
    return problem.space


class FlexSampling(Sampling):
    """Initial population: the teacher plan, then DeepCache-like uniform plans, step-reduction plans
    and (where the first segment may be skipped) stock-spaced step reductions at any step count, in
    turn (the baselines a search should start from), then random genomes.

    ``trailing_null`` puts three more families first in the turn: step reduction on the teacher's grid with
    PARTIAL steps early (``early_partial``), FULL steps only, placed densely at high noise (``high_noise``,
    where the first segment may be skipped), and DeepCache with trailing NULL steps (every segment
    ``F p.. . .``: interval k between 1 and L <= 5, shallowest branch). At their speeds (early: 4x-6x
    wall-clock, placed: 3x-7x, trailing: 2.3x-3.6x) these are far closer to the teacher than stock step
    counts, so fidelity searches start from them; trailing plans with 10-step segments lost to a stock step
    count at their speed at every k, and early ones first because they hold the faster region
    (benchmarks/REPORT.md, "Fidelity seeds" and "Step placement"). Without ``macs`` trailing seeds come
    most segments first, early-PARTIAL and placed ones spread over their FULL step counts.

    With ``macs`` (the problem's ``MacCounter``) and ``feasible`` (``SearchConfig.feasible``: the MACs
    budget and floor), seeds outside the constraints are left out: a population of 16 has no place
    to spend on plans its search must discard. The trailing-NULL seeds of one segment count then
    come spread over their MACs ratios (``spread_order``, the fastest first), so the few that fit
    cover that count's speeds rather than its slowest only (benchmarks/REPORT.md, ninth session's
    findings: 20 x ``F p0 . . .``, 4.4x, was never seeded).
    """

    def __init__(self, trailing_null: bool = False, macs: MacCounter | None = None,
                 feasible: Callable[[float], bool] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.trailing_null, self.macs, self.feasible = trailing_null, macs, feasible

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        sp = _space(problem)
        rng = random_state
        seeds: list[np.ndarray] = []
        if sp.T in sp.Ns:  # the teacher: every step FULL
            seeds.append(sp.join(sp.T, np.zeros(sp.T, int), np.ones(sp.T, int)))
        # DeepCache-like: all steps active, PARTIAL at one branch between FULL steps
        # (for fidelity, intervals of at most 10: longer ones lost to a stock step count at their speed)
        uniform = [(n, bi) for n in sp.Ns if 1 < sp.T // n <= (10 if self.trailing_null else sp.T)
                   for bi in range(len(sp.branches))]
        deepcache = [sp.join(n, np.full(n, bi), np.full(n, sp.T // n))
                     for n, bi in (uniform[j] for j in rng.permutation(len(uniform)))]
        # step reduction: one FULL step per segment, the rest NULL
        steps = [sp.join(n, np.zeros(n, int), np.ones(n, int)) for n in rng.permutation([n for n in sp.Ns if n < sp.T])]
        # where the first segment may be skipped: k FULL steps spaced as a stock num_inference_steps=k run
        # ("leading": the last at the end of the schedule, the first below its top), for any k
        leading, placed = [], []
        if sp.T in sp.Ns and sp.k_low(sp.T)[0] == 0:
            for k in rng.permutation(np.arange(2, sp.T // 2 + 1)):
                leading.append(stock_spaced(sp, k))
            if self.trailing_null:  # from ceil(0.14 T) FULL steps on (``high_noise``), spread over their counts
                built = {k: g for k in range(-(-14 * sp.T // 100), sp.T // 2 + 1) if (g := high_noise(sp, k)) is not None}
                placed = [built[k] for k in spread_order(list(built), list(built))]
        # DeepCache with trailing NULL steps, segments of at most 5 steps (longer ones lose to stock step
        # counts at their speed): most segments first, then the most active steps per segment
        pairs = sorted(((n, k) for n in sp.Ns if sp.T // n <= 5 for k in range(2, sp.T // n)),
                       reverse=True) if self.trailing_null else []
        trailing = [sp.join(n, np.zeros(n, int), np.full(n, k)) for n, k in pairs]
        built = {f: g for f in range(2, sp.T) if self.trailing_null and (g := early_partial(sp, f)) is not None}
        early = [built[f] for f in spread_order(list(built), list(built))]
        families = [early, placed, trailing, deepcache, steps, leading]  # fixed: the others' draws are unchanged
        if self.macs is not None:
            rated = [[(g, self.macs.ratio(sp.decode(g), sp.T)) for g in fam] for fam in families]
            if self.feasible is not None:
                rated = [[(g, r) for g, r in fam if self.feasible(r)] for fam in rated]
            families = [[g for g, _ in fam] for fam in rated]
            by_n: dict[int, list] = {}
            for g, r in rated[2]:
                by_n.setdefault(int(g[0]), []).append((g, np.log(r)))
            families[2] = [g for i in sorted(by_n, reverse=True)  # n_index: most segments first
                           for g in spread_order([g for g, _ in by_n[i]], [v for _, v in by_n[i]])]
            for i in (0, 1):
                families[i] = spread_order(families[i], [np.log(r) for _, r in rated[i]])
        for i in range(max(map(len, families))):
            seeds += [g[i] for g in families if i < len(g)]
        X = seeds[:n_samples]
        while len(X) < n_samples:
            X.append(sp.random(rng))
        return np.array(X, dtype=int)


def full_at(sp: SearchSpace, positions) -> np.ndarray:
    """The genome of one segment per base step (N = T), FULL at ``positions``, NULL elsewhere: FULL steps
    anywhere on the base schedule."""
    k = np.zeros(sp.T, int)
    k[np.asarray(positions, int)] = 1
    return sp.join(sp.T, np.zeros(sp.T, int), k)


def stock_spaced(sp: SearchSpace, k: int) -> np.ndarray:
    """``k`` FULL steps spaced as a stock ``num_inference_steps=k`` run ("leading": the last at the end of the
    schedule, the first below its top), rounded to the base grid."""
    return full_at(sp, sp.T - 1 - np.round(np.arange(k) * sp.T / k).astype(int))


def high_noise(sp: SearchSpace, fulls: int, p: float = 1.5) -> np.ndarray | None:
    """``fulls`` FULL steps at base steps round((T - 1) u^p), u evenly spaced in [0, 1]: the top of the
    schedule and its end, denser at high noise (None where rounding merges two). On the embedded model
    this is far closer to the teacher than stock spacing of as many steps from 14 on (paired distance
    on 256 images 1.594 against 1.752 at 20 steps, 1.472 against 1.709 at 22), and no closer at 12 or
    fewer (benchmarks/REPORT.md, "Step placement"): seeded from 14% of T on."""
    pos = np.round((sp.T - 1) * np.linspace(0, 1, fulls) ** p).astype(int)
    return full_at(sp, pos) if len(set(pos.tolist())) == fulls else None


def early_partial(sp: SearchSpace, fulls: int) -> np.ndarray | None:
    """Step reduction to ``fulls`` FULL steps on the teacher's grid, a PARTIAL step (shallowest branch) after
    each of the first ceil(fulls / 5): the fewest segments of at most 10 steps that hold ``fulls``, one
    FULL step at the start of each, the segments left over skipped (spread evenly after the PARTIAL
    ones, never the last). None where the space has no such plan.

    Stock spacing is hardest on the teacher at the top of the schedule: on the embedded model a PARTIAL
    step after each of the first four FULL steps of 20 brought the paired distance from 1.726 to 1.574
    at 3% of the time, the same four at the end only to 1.720, and skipping one to three segments
    cost little (benchmarks/REPORT.md, the eleventh session's findings and "Fidelity seeds")."""
    ns = [n for n in sp.Ns if fulls <= n < sp.T and sp.T // n <= 10]
    if not ns:
        return None
    n = min(ns)
    skip, lead = n - fulls, -(-fulls // 5)
    if skip and sp.k_low(n)[1:].min() > 0:
        return None
    k = np.ones(n, int)
    k[:lead] = 2
    k[np.round(lead + np.arange(1, skip + 1) * (n - 1 - lead) / (skip + 1)).astype(int)] = 0
    return sp.join(n, np.zeros(n, int), k) if (k == 0).sum() == skip and k[-1] else None


def spread_order(items: list, values) -> list:
    """``items`` reordered so that every prefix spreads over ``values``: the lowest first, then each
    time the one farthest from all taken (the highest second, then the gaps halve)."""
    v = np.asarray(values, dtype=float)
    order = [int(np.argmin(v))] if len(items) else []
    while len(order) < len(items):
        gap = [-1.0 if i in order else min(abs(v[i] - v[j]) for j in order) for i in range(len(items))]
        order.append(int(np.argmax(gap)))
    return [items[i] for i in order]


class SegmentMutation(Mutation):
    """Redraws whole segments' (branch, interval) jointly, or changes N and re-maps segments.

    ``prob_var`` is the chance each segment is redrawn (pymoo's per-variable rate; None: 1/N,
    one segment on average); one segment always changes.
    """

    def __init__(self, prob: float = 1.0, prob_var: float | None = None, prob_change_n: float = 0.2, **kwargs):
        super().__init__(prob=prob, prob_var=prob_var, **kwargs)
        self.prob_change_n = prob_change_n

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        sp, rng = _space(problem), random_state
        out = np.empty_like(X)
        for i, x in enumerate(X):
            n, b, k = sp.split(x)
            L = sp.T // n
            # a segment with one admissible interval cannot change (L = 1 without skipping): then N changes
            low = sp.k_low(n)
            can = np.flatnonzero(low < L)  # segments with more than one choice of interval
            if len(sp.Ns) > 1 and (not len(can) or rng.random() < self.prob_change_n):
                others = [m for m in sp.Ns if m != n]
                out[i] = sp.remap(x, others[int(rng.integers(len(others)))])
                continue
            redraw = rng.random(n) < (1.0 / n if self.prob_var is None else float(get(self.prob_var)))
            forced = int(can[rng.integers(len(can))]) if len(can) else int(rng.integers(n))
            redraw[forced] = True
            b, k = b.copy(), k.copy()
            old = (b[forced] if k[forced] > 1 else 0, k[forced])
            b[redraw] = rng.integers(0, len(sp.branches), redraw.sum())
            k[redraw] = rng.integers(low[redraw], L + 1)
            while low[forced] < L and (b[forced] if k[forced] > 1 else 0, k[forced]) == old:  # one segment changes
                b[forced], k[forced] = rng.integers(0, len(sp.branches)), rng.integers(low[forced], L + 1)
            if not k.any() and n > 1:  # the change removed the last network call: move the FULL step instead
                k[(forced + 1 + int(rng.integers(n - 1))) % n] = 1
            out[i] = sp.join(n, b, k)
        return out


class SegmentCrossover(Crossover):
    """One-point crossover at a segment boundary; a parent with another N is re-mapped first."""

    def __init__(self, **kwargs):
        super().__init__(n_parents=2, n_offsprings=2, **kwargs)

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        sp, rng = _space(problem), random_state
        _, n_matings, _ = X.shape
        Q = np.empty((2, n_matings, sp.n_var), dtype=X.dtype)
        for m in range(n_matings):
            p1, p2 = X[0, m], X[1, m]
            for o, (a, c) in enumerate(((p1, p2), (p2, p1))):
                n = sp.split(a)[0]
                c = sp.remap(c, n) if sp.split(c)[0] != n else c
                _, ba, ka = sp.split(a)
                _, bc, kc = sp.split(c)
                cut = int(rng.integers(1, n)) if n > 1 else 0
                Q[o, m] = sp.join(n, np.concatenate([ba[:cut], bc[cut:]]), np.concatenate([ka[:cut], kc[cut:]]))
        return Q


class CanonicalDuplicateElimination(DuplicateElimination):
    """Two genomes are duplicates when their canonical forms (hence their plans) are equal."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space

    def _do(self, pop, other, is_duplicate):
        seen = set()
        if other is not None:
            seen.update(self.space.key(ind.X) for ind in other)
        for i, ind in enumerate(pop):
            key = self.space.key(ind.X)
            if key in seen:
                is_duplicate[i] = True
            else:
                seen.add(key)
        return is_duplicate
