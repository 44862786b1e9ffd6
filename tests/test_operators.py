"""pymoo operators over segments: every genome they return is valid and canonical (property tests)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pymoo.core.population import Population

from flexnas.metrics.macs import MacCounter
from flexnas.plan.space import SearchSpace
from flexnas.search.operators import (CanonicalDuplicateElimination, FlexSampling, SegmentCrossover, SegmentMutation,
                                      early_partial, high_noise, spread_order)

S = "DDIMScheduler"
SEEDS = range(200)

SPACES = {
    "T10-N2,5,10-B6": SearchSpace(S, 10, (2, 5, 10), tuple(range(6))),
    "T12-all-N-B2": SearchSpace(S, 12, (1, 2, 3, 4, 6, 12), (0, 3)),
    "T100-N10-B3": SearchSpace(S, 100, (10,), (0, 2, 4)),
    "T100-N4,25-B1": SearchSpace(S, 100, (4, 25), (1,)),
    "T8-N8-B2": SearchSpace(S, 8, (8,), (0, 1)),  # L=1: only the teacher
    "T10-N1-B2": SearchSpace(S, 10, (1,), (0, 1)),  # a single segment
    # skippable segments: any segment in drop mode, all but the first in reuse mode
    "T10-N2,5,10-B6-skip": SearchSpace(S, 10, (2, 5, 10), tuple(range(6)), "drop", True),
    "T12-all-N-B2-skip-reuse": SearchSpace(S, 12, (1, 2, 3, 4, 6, 12), (0, 3), "reuse", True),
    "T8-N8-B2-skip": SearchSpace(S, 8, (8,), (0, 1), "drop", True),  # L=1: every subset of the steps
}


def stand_in(space: SearchSpace):
    """What the operators need from a pymoo problem: ``.space`` and ``n_var``."""
    return SimpleNamespace(space=space, n_var=space.n_var)


def assert_all_canonical(space, X):
    X = np.asarray(X)
    assert X.ndim == 2 and X.shape[1] == space.n_var
    for x in X:
        assert space.is_canonical(x), x


@pytest.fixture(params=list(SPACES), ids=list(SPACES))
def space(request):
    return SPACES[request.param]


# --------------------------------------------------------------------------- sampling
def is_deepcache(sp, x) -> bool:
    """All steps active: every segment's interval is L (N < T), one branch throughout."""
    n, b, k = sp.split(x)
    return n < sp.T and bool(np.all(k == sp.T // n)) and len(set(b.tolist())) == 1


def is_step_reduction(sp, x) -> bool:
    """One FULL step per segment, the rest NULL (N < T)."""
    n, b, k = sp.split(x)
    return n < sp.T and bool(np.all(k == 1))


def test_sampling_seeds_teacher_then_uniform():
    sp = SPACES["T10-N2,5,10-B6"]
    X = FlexSampling()._do(stand_in(sp), 3, random_state=np.random.default_rng(0))
    assert_all_canonical(sp, X)
    teacher = sp.decode(X[0])
    assert teacher.N == 10 and all(s.interval == 1 for s in teacher.segments)
    assert is_deepcache(sp, X[1])  # the DeepCache-like uniform plan right after the teacher
    # teacher + 12 DeepCache-like (N in {2, 5} x 6 branches) + 2 step-reduction seeds, then random
    for seed in range(20):
        X = FlexSampling()._do(stand_in(sp), 20, random_state=np.random.default_rng(seed))
        assert_all_canonical(sp, X)
        assert sp.decode(X[0]).N == 10 and is_deepcache(sp, X[1])
        dc = {sp.key(x) for x in X[1:15] if is_deepcache(sp, x)}
        st = {sp.key(x) for x in X[1:15] if is_step_reduction(sp, x)}
        assert len(dc) == 12 and len(st) == 2 and len(dc | st) == 14
        assert {sp.split(np.array(k))[0] for k in st} == {2, 5}


def test_fidelity_sampling_adds_deepcache_with_trailing_null_steps():
    """``trailing_null``: two seed families first in the turn, ``early_partial``, then every segment
    ``F p.. . .`` (1 < k < L <= 5) at the shallowest branch, each (N, k) once, most segments first; the
    other seeds stay as they were, in order, but DeepCache-like ones keep to intervals of at most 10."""
    sp = SPACES["T10-N2,5,10-B6"]  # N=2 (L=5): k = 2, 3, 4; N=5 (L=2) and N=10 have no room
    X = FlexSampling(trailing_null=True)._do(stand_in(sp), 20, random_state=np.random.default_rng(0))
    assert_all_canonical(sp, X)

    def trailing(x):
        return trailing_key(sp, x)

    seeds = X[:20]  # teacher + 12 DeepCache-like + 2 step reductions + 3 trailing-null + 2 early-PARTIAL
    assert list(filter(None, map(trailing, seeds))) == [(2, 4), (2, 3), (2, 2)]  # most active steps first
    assert sp.decode(next(x for x in seeds if trailing(x) == (2, 3))).strip() == "F p0 p0 . . F p0 p0 . ."
    # without skipping, early-PARTIAL plans exist only where every segment keeps its FULL step: 2 and 5
    early = [sp.decode(x).strip() for x in seeds if early_key(sp, x)]
    assert early == ["F p0 . . . F . . . .", "F p0 F . F . F . F ."]
    assert sp.decode(X[1]).strip() == early[0] and trailing(X[2]) == (2, 4)  # the turn: early, trailing, ...
    plain = FlexSampling()._do(stand_in(sp), 15, random_state=np.random.default_rng(0))
    assert np.array_equal(np.array([x for x in seeds if trailing(x) is None and not early_key(sp, x)]), plain)
    # T=20: DeepCache-like seeds at N=2 (interval 10) stay, at N=1 (interval 20) go, for fidelity only
    sp = SearchSpace(S, 20, (1, 2, 4), (0,))
    intervals = [{sp.T // sp.decode(x).N for x in FlexSampling(trailing_null=f)._do(
        stand_in(sp), 40, random_state=np.random.default_rng(0)) if is_deepcache(sp, x)} for f in (False, True)]
    assert intervals == [{5, 10, 20}, {5, 10}]


def early_key(sp, x) -> int | None:
    """The FULL step count of an ``early_partial`` genome, else None."""
    return next((f for f in range(2, sp.T) if (g := early_partial(sp, f)) is not None and sp.key(g) == sp.key(x)),
                None)


def test_early_partial_against_hand_worked_plans():
    """The fewest segments of at most 10 steps holding the FULL steps, a PARTIAL after each of the first
    ceil(f / 5), the segments left over skipped evenly after those, never the last."""
    sp = SearchSpace(S, 20, (2, 4, 5, 10, 20), (0, 1), "drop", True)
    strip = {f: sp.decode(early_partial(sp, f)).strip() for f in (2, 3, 4, 6)}
    assert strip[2] == "F p0 . . . . . . . . F . . . . . . . . ."  # N=2
    assert strip[3] == "F p0 . . . F . . . . . . . . . F . . . ."  # N=4, one segment skipped
    assert strip[4] == "F p0 . . . F . . . . F . . . . F . . . ."  # N=4
    assert strip[6] == "F p0 F p0 F . . . F . . . . . F . . . F ."  # N=10: skips at round(2 + j * 7 / 5)
    assert early_partial(sp, 11) is None and early_partial(sp, 20) is None  # no N in 11..19; the teacher is not one
    plain = SearchSpace(S, 20, (2, 4, 5, 10, 20), (0, 1))  # no skipping: only f = N
    assert [f for f in range(2, 20) if early_partial(plain, f) is not None] == [2, 4, 5, 10]
    for f in (2, 3, 4, 5, 6, 7, 8, 9, 10):
        c = sp.decode(early_partial(sp, f)).counts()
        assert c["full"] == f and c["partial"] == {0: -(-f // 5)}


def test_high_noise_places_full_steps_densely_at_the_top_and_seeds_fidelity_second():
    """FULL at round((T - 1) u^1.5) for u evenly spaced in [0, 1], None where rounding merges two; for fidelity
    these seeds come second in the turn (after the early-PARTIAL ones), from ceil(0.14 T) FULL steps to T / 2,
    spread over their counts; quality searches get none."""
    sp = SearchSpace(S, 20, (2, 4, 5, 10, 20), (0, 1), "drop", True)
    plan = sp.decode(high_noise(sp, 5))  # 19 x (0, 0.125, 0.354, 0.650, 1) = 0, 2.4, 6.7, 12.3, 19
    assert plan.strip() == " ".join("F" if i in (0, 2, 7, 12, 19) else "." for i in range(20))
    assert plan.counts()["full"] == 5 and sp.decode(high_noise(sp, 5, p=1.0)).strip().startswith("F . . . . F")
    assert high_noise(sp, 20) is None  # 19 x (1/19)^1.5 rounds to 0: merged with the first
    counts = [f for f in range(3, 11) if high_noise(sp, f) is not None]  # ceil(0.14 x 20) = 3
    keys = {sp.key(high_noise(sp, f)): f for f in counts}
    X = FlexSampling(trailing_null=True)._do(stand_in(sp), 60, random_state=np.random.default_rng(0))
    got = [keys[sp.key(x)] for x in X if sp.key(x) in keys]
    assert got == spread_order(counts, counts) and keys[sp.key(X[2])] == got[0] and early_key(sp, X[1])
    plain = FlexSampling()._do(stand_in(sp), 60, random_state=np.random.default_rng(0))
    assert not any(sp.key(x) in keys for x in plain)


def trailing_key(sp, x) -> tuple[int, int] | None:
    n, b, k = sp.split(x)
    return (n, int(k[0])) if 1 < k[0] < sp.T // n and np.all(k == k[0]) and np.all(b == 0) else None


def test_sampling_with_macs_keeps_the_constraints_and_spreads_trailing_seeds():
    """With a MAC counter and ``feasible``, every seed but the teacher meets the constraints (checked with the
    counter itself), and one segment count's trailing-NULL seeds come fastest, slowest, then between."""
    sp = SearchSpace(S, 20, (2, 4, 5, 10, 20), (0, 1))  # L=10: k=2..9; L=5: k=2..4; L=4: k=2, 3
    macs = MacCounter(full=100, partial={0: 10, 1: 30})
    ok = lambda r: 0.08 <= r <= 0.28  # noqa: E731 - a budget and a floor
    X = FlexSampling(trailing_null=True, macs=macs, feasible=ok)._do(stand_in(sp), 30,
                                                                      random_state=np.random.default_rng(0))
    assert_all_canonical(sp, X)
    ratio = [macs.ratio(sp.decode(x), sp.T) for x in X]
    assert ratio[0] == 1.0 and sp.decode(X[0]).N == 20  # the teacher, whose images the measures need anyway
    seeds = [x for x in X[1:] if trailing_key(sp, x) or early_key(sp, x) or is_deepcache(sp, x)
             or is_step_reduction(sp, x)]
    assert len(seeds) >= 10 and all(ok(macs.ratio(sp.decode(x), sp.T)) for x in seeds)
    # trailing members within the constraints: N=5 (L=4): k=2 (0.275); N=4 (L=5): k=2..4 (0.22, 0.24, 0.26),
    # most segments first, each count spread fastest / slowest / between; none at N=2 (L=10)
    got = [t for t in map(lambda x: trailing_key(sp, x), X) if t]
    assert got == [(5, 2), (4, 2), (4, 4), (4, 3)]
    assert trailing_key(sp, X[2]) == (5, 2)  # second in the turn
    # early-PARTIAL: f = 2, 4, 5 (0.105, 0.205, 0.255; f = 10 is 0.51), fastest, slowest, between; first in the turn
    assert [f for f in (early_key(sp, x) for x in X) if f] == [2, 5, 4] and early_key(sp, X[1]) == 2


def test_spread_order_against_hand_worked_cases():
    assert spread_order(list("abcde"), [0, 1, 2, 3, 4]) == list("aecbd")
    assert spread_order(list("xyz"), [5.0, 1.0, 3.5]) == list("yxz")
    assert spread_order([], []) == []


def test_sampling_without_teacher_in_space():
    sp = SPACES["T100-N10-B3"]  # T=100 is not an admissible N: no teacher
    X = FlexSampling()._do(stand_in(sp), 6, random_state=np.random.default_rng(0))
    assert_all_canonical(sp, X)
    assert is_deepcache(sp, X[0])
    seeds = X[:4]  # 3 DeepCache-like (one per branch) and the step reduction to N=10
    assert sum(is_deepcache(sp, x) for x in seeds) == 3 and sum(is_step_reduction(sp, x) for x in seeds) == 1
    assert len({sp.key(x) for x in seeds}) == 4


def test_sampling_pymoo_do_returns_population():
    sp = SPACES["T10-N2,5,10-B6"]
    pop = FlexSampling().do(stand_in(sp), 6, random_state=np.random.default_rng(3))
    assert isinstance(pop, Population) and len(pop) == 6
    assert_all_canonical(sp, pop.get("X"))


@pytest.mark.parametrize("n_samples", [1, 2, 7, 30])
def test_sampling_property(space, n_samples):
    for seed in SEEDS:
        X = FlexSampling()._do(stand_in(space), n_samples, random_state=np.random.default_rng(seed))
        assert len(X) == n_samples
        assert_all_canonical(space, X)
        if space.T in space.Ns:
            assert space.decode(X[0]).N == space.T
        else:
            assert is_deepcache(space, X[0])


def test_sampling_is_seeded():
    sp = SPACES["T12-all-N-B2"]
    a = FlexSampling()._do(stand_in(sp), 20, random_state=np.random.default_rng(5))
    b = FlexSampling()._do(stand_in(sp), 20, random_state=np.random.default_rng(5))
    assert np.array_equal(a, b)


# --------------------------------------------------------------------------- mutation
def test_mutation_property(space):
    prob = stand_in(space)
    mut = SegmentMutation()
    only_teacher = all(space.T // n == 1 for n in space.Ns) and len(space.Ns) == 1
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        X = np.array([space.random(rng) for _ in range(8)])
        Y = mut._do(prob, X.copy(), random_state=rng)
        assert Y.shape == X.shape
        assert_all_canonical(space, Y)
        if not only_teacher:
            # something changes (almost always; never nothing over a whole population)
            assert any(space.key(x) != space.key(y) for x, y in zip(X, Y))


def test_mutation_changes_every_individual_that_can_change(space):
    """Every mutated genome decodes to another plan, unless the space holds one plan shape only
    (a single N with L = 1: the teacher)."""
    frozen = len(space.Ns) == 1 and space.T == space.Ns[0] and not space.skip
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        X = np.array([space.random(rng) for _ in range(4)])
        X[0] = space.join(max(space.Ns), np.zeros(max(space.Ns), int), np.ones(max(space.Ns), int))
        Y = SegmentMutation()._do(stand_in(space), X.copy(), random_state=rng)
        for x, y in zip(X, Y):
            assert (space.key(x) == space.key(y)) if frozen else (space.key(x) != space.key(y)), (x, y)


def test_mutation_changes_n_sometimes():
    sp = SPACES["T12-all-N-B2"]
    mut = SegmentMutation(prob_change_n=0.5)
    n_changed = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        X = np.array([sp.random(rng) for _ in range(4)])
        Y = mut._do(stand_in(sp), X.copy(), random_state=rng)
        assert_all_canonical(sp, Y)
        n_changed += sum(sp.split(x)[0] != sp.split(y)[0] for x, y in zip(X, Y))
    assert n_changed > 0


def test_mutation_prob_var_sets_how_many_segments_change():
    """prob_var 0: exactly the one forced segment changes; prob_var 1: every segment is redrawn (most change)."""
    sp = SPACES["T12-all-N-B2"]
    changed = {0.0: [], 1.0: []}
    for rate in changed:
        mut = SegmentMutation(prob_var=rate, prob_change_n=0.0)
        for seed in range(30):
            rng = np.random.default_rng(seed)
            x = sp.join(4, np.zeros(4, int), np.ones(4, int))  # N = 4 (L = 3), every segment F . .
            y = mut._do(stand_in(sp), x[None].copy(), random_state=rng)[0]
            n, b, k = sp.split(y)
            assert n == 4
            changed[rate].append(int(np.sum(k != 1)))
    assert changed[0.0] == [1] * 30
    assert np.mean(changed[1.0]) > 2  # each redrawn segment keeps interval 1 with chance 1/3


def test_mutation_pymoo_do(space):
    prob = stand_in(space)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pop = Population.new(X=np.array([space.random(rng) for _ in range(6)]))
        out = SegmentMutation().do(prob, pop, random_state=rng)
        assert_all_canonical(space, out.get("X"))


def test_mutation_of_non_canonical_input_is_canonical():
    sp = SPACES["T10-N2,5,10-B6"]
    rng = np.random.default_rng(0)
    X = []
    for _ in range(50):
        x = sp.random(rng)
        n = sp.split(x)[0]
        x[1 + n:1 + sp.smax] = rng.integers(0, 6, sp.smax - n)  # garbage in inactive genes
        X.append(x)
    Y = SegmentMutation()._do(stand_in(sp), np.array(X), random_state=rng)
    assert_all_canonical(sp, Y)


# --------------------------------------------------------------------------- crossover
def test_crossover_property(space):
    prob = stand_in(space)
    cx = SegmentCrossover()
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        X = np.array([[space.random(rng) for _ in range(5)] for _ in range(2)])  # (parents, matings, n_var)
        Q = cx._do(prob, X.copy(), random_state=rng)
        assert Q.shape == (2, 5, space.n_var)
        assert_all_canonical(space, Q.reshape(-1, space.n_var))
        # each child keeps the N of the parent it starts from
        for o in range(2):
            for m in range(5):
                assert space.split(Q[o, m])[0] == space.split(X[o, m])[0]


def test_crossover_children_mix_parents():
    sp = SearchSpace(S, 10, (5,), (0, 1, 2))
    rng = np.random.default_rng(0)
    a = sp.join(5, np.array([1, 1, 1, 1, 1]), np.array([2, 2, 2, 2, 2]))
    b = sp.join(5, np.array([2, 2, 2, 2, 2]), np.array([2, 2, 2, 2, 2]))
    X = np.array([[a] * 50, [b] * 50])
    Q = SegmentCrossover()._do(stand_in(sp), X, random_state=rng)
    for o, (first, second) in enumerate(((1, 2), (2, 1))):
        for q in Q[o]:
            _, bq, _ = sp.split(q)
            cut = int(np.argmax(bq != first))
            assert cut >= 1 and np.all(bq[:cut] == first) and np.all(bq[cut:] == second)


def test_crossover_pymoo_do(space):
    prob = stand_in(space)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pop = Population.new(X=np.array([space.random(rng) for _ in range(8)]))
        parents = np.arange(8).reshape(4, 2)
        off = SegmentCrossover().do(prob, pop, parents, random_state=rng)
        assert len(off) == 8
        assert_all_canonical(space, off.get("X"))


# --------------------------------------------------------------------------- duplicates
def test_duplicate_elimination_canonical():
    sp = SPACES["T10-N2,5,10-B6"]
    a = sp.join(2, np.array([3, 0]), np.array([4, 1]))
    a_noncanon = a.copy()
    a_noncanon[2] = 5  # branch gene of the interval-1 segment
    a_noncanon[1 + sp.smax + 7] = 3  # an inactive interval gene
    b = sp.join(5, np.array([1, 1, 1, 1, 1]), np.array([2, 2, 2, 2, 2]))
    c = sp.join(10, np.zeros(10, int), np.ones(10, int))
    elim = CanonicalDuplicateElimination(sp)

    pop = Population.new(X=np.array([a, b, a_noncanon, c, b]))
    flags = elim._do(pop, None, np.full(len(pop), False))
    assert flags.tolist() == [False, False, True, False, True]
    assert len(elim.do(pop)) == 3

    other = Population.new(X=np.array([c, a_noncanon]))
    new = Population.new(X=np.array([b, a, c]))
    assert elim._do(new, other, np.full(3, False)).tolist() == [False, True, True]
    kept = elim.do(new, other)
    assert len(kept) == 1 and sp.key(kept[0].X) == sp.key(b)

    # pymoo's return_indices path
    _, keep_idx, dup_idx = elim.do(pop, return_indices=True)
    assert keep_idx == [0, 1, 3] and dup_idx == [2, 4]


def test_duplicate_elimination_after_operators_all_distinct():
    sp = SPACES["T12-all-N-B2"]
    elim = CanonicalDuplicateElimination(sp)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        X = FlexSampling()._do(stand_in(sp), 40, random_state=rng)
        kept = elim.do(Population.new(X=X))
        keys = [sp.key(x) for x in kept.get("X")]
        assert len(keys) == len(set(keys)) == len({sp.key(x) for x in X})


def test_skip_space_reaches_skipped_segments_and_keeps_a_full_step():
    drop, reuse = SPACES["T10-N2,5,10-B6-skip"], SPACES["T12-all-N-B2-skip-reuse"]
    for sp in (drop, reuse):
        rng = np.random.default_rng(0)
        X = np.array([sp.random(rng) for _ in range(300)])
        X = np.vstack([X, SegmentMutation().do(stand_in(sp), Population.new(X=X), random_state=rng).get("X")])
        assert_all_canonical(sp, X)
        ks = [sp.split(x)[2] for x in X]
        assert all(k.any() for k in ks)  # never a plan without a network call
        assert any((k[1:] == 0).any() for k in ks if len(k) > 1)
        first_skipped = any(k[0] == 0 for k in ks)
        assert first_skipped == (sp.null_mode == "drop")
        for x in X[:50]:
            assert sp.decode(x).counts()["full"] >= 1
    assert drop.join(5, np.zeros(5, int), np.zeros(5, int))[1 + drop.smax:][4] == 1  # all-skipped: repaired
