"""SearchSpace: genome layout, canonical form, decode/encode, sizes and build errors (no model needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flexnas.errors import FlexnasError
from flexnas.engine.steps import executed_steps
from flexnas.plan.plan import Plan, Segment, StepKind
from flexnas.plan.space import SearchSpace

S = "DDIMScheduler"


@pytest.fixture
def small():
    """T=4, N in (1, 2, 4), two branches: small enough to enumerate every genome."""
    return SearchSpace(S, 4, (1, 2, 4), (0, 1))


def all_genomes(sp: SearchSpace):
    """Every genome within the pymoo bounds (inactive genes included), valid or not."""
    xl, xu = sp.bounds()
    for x in itertools.product(*(range(lo, hi + 1) for lo, hi in zip(xl, xu))):
        yield np.array(x, dtype=int)


def canonical_genomes(sp: SearchSpace):
    """Every canonical genome, built independently of ``canonical``: inactive genes (b=0, k=1),
    and b=0 wherever k=1."""
    s, B = sp.smax, len(sp.branches)
    out = []
    for ni, n in enumerate(sp.Ns):
        L = sp.T // n
        for k in itertools.product(range(1, L + 1), repeat=n):
            choices = [range(B) if ki > 1 else [0] for ki in k]
            for b in itertools.product(*choices):
                x = np.zeros(sp.n_var, dtype=int)
                x[0] = ni
                x[1:1 + n] = b
                x[1 + s:] = 1
                x[1 + s:1 + s + n] = k
                out.append(x)
    return out


# --------------------------------------------------------------------------- layout
def test_layout_and_bounds(small):
    assert small.smax == 4 and small.n_var == 9 and small.lmax == 4
    xl, xu = small.bounds()
    assert list(xl) == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert list(xu) == [2, 1, 1, 1, 1, 4, 4, 4, 4]


def test_ns_and_branches_are_sorted_and_deduplicated():
    sp = SearchSpace(S, 10, (10, 2, 5, 2), (3, 1, 1))
    assert sp.Ns == (2, 5, 10) and sp.branches == (1, 3)


# --------------------------------------------------------------------------- decode / encode
def test_round_trip_every_canonical_genome(small):
    genomes = canonical_genomes(small)
    plans = set()
    for x in genomes:
        assert small.is_valid(x) and small.is_canonical(x), x
        plan = small.decode(x)
        assert isinstance(plan, Plan) and plan.T == 4 and plan.scheduler == S
        assert plan.N == small.Ns[x[0]]
        back = small.encode(plan)
        assert np.array_equal(back, x), (x, back)
        plans.add(plan)
    # distinct canonical genomes <-> distinct plans
    assert len(plans) == len(genomes) == small.size_distinct_plans() == 7 + 9 + 1


def test_canonical_classes_over_every_genome(small):
    """Exhaustive: every valid genome in bounds canonicalises to a genome of the enumerated set,
    two genomes have the same canonical form iff they decode to the same plan."""
    enumerated = {tuple(x) for x in canonical_genomes(small)}
    by_plan: dict[Plan, set] = {}
    n_valid = 0
    for x in all_genomes(small):
        if not small.is_valid(x):
            with pytest.raises(FlexnasError):
                small.canonical(x)
            with pytest.raises(FlexnasError):
                small.decode(x)
            continue
        n_valid += 1
        c = small.canonical(x)
        assert tuple(c) in enumerated
        assert np.array_equal(small.canonical(c), c)  # idempotent
        assert small.key(x) == tuple(c)
        by_plan.setdefault(small.decode(x), set()).add(tuple(c))
    assert n_valid > len(enumerated)
    assert all(len(v) == 1 for v in by_plan.values())
    assert len(by_plan) == small.size_distinct_plans()


def test_canonical_ignores_inactive_and_interval1_branch_genes():
    sp = SearchSpace(S, 10, (2, 5, 10), (0, 1, 2))
    s = sp.smax  # 10
    base = sp.join(2, np.array([2, 0]), np.array([3, 1]))
    assert list(base[:3]) == [0, 2, 0] and list(base[1 + s:1 + s + 2]) == [3, 1]
    variants = []
    v = base.copy()
    v[1 + 1] = 2  # branch gene of the interval-1 segment
    variants.append(v)
    v = base.copy()
    v[1 + 2:1 + s] = 1  # inactive branch genes
    v[1 + s + 2:] = [2, 2, 2, 2, 2, 2, 2, 2]  # inactive interval genes (any values)
    variants.append(v)
    v = base.copy()
    v[1 + 5] = 2
    v[1 + s + 9] = 7
    v[1 + 1] = 1
    variants.append(v)
    for v in variants:
        assert not sp.is_canonical(v)
        assert np.array_equal(sp.canonical(v), base)
        assert sp.decode(v) == sp.decode(base)
        assert sp.key(v) == sp.key(base)
    # a change of an active gene is a different plan
    other = base.copy()
    other[1] = 1
    assert sp.key(other) != sp.key(base) and sp.decode(other) != sp.decode(base)


def test_decode_contents():
    sp = SearchSpace(S, 10, (2, 5, 10), (1, 3, 4))
    x = sp.join(2, np.array([2, 1]), np.array([4, 1]))
    plan = sp.decode(x)
    assert plan.segments == (Segment(4, 4), Segment(1, None))  # branch gene indexes sp.branches
    assert plan.strip() == "F p4 p4 p4 . F . . . ."
    assert np.array_equal(sp.encode(plan), x)


@pytest.mark.parametrize("bad", [
    [3, 0, 0, 0, 0, 1, 1, 1, 1],  # n_index out of range
    [-1, 0, 0, 0, 0, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1, 1],  # interval 0
    [0, 0, 0, 0, 0, 5, 1, 1, 1],  # interval > L = 4
    [1, 0, 0, 0, 0, 1, 3, 1, 1],  # N=2: L=2, interval 3
    [2, 0, 0, 0, 0, 1, 1, 2, 1],  # N=4: L=1, interval 2
    [0, 2, 0, 0, 0, 2, 1, 1, 1],  # branch index out of range
    [0, -1, 0, 0, 0, 2, 1, 1, 1],
    [0, 0, 0, 0, 0, 1, 1, 1],  # wrong length
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
])
def test_invalid_genomes_raise(small, bad):
    x = np.array(bad)
    assert not small.is_valid(x) and not small.is_canonical(x)
    for fn in (small.canonical, small.decode, small.key):
        with pytest.raises(FlexnasError):
            fn(x)


def test_encode_rejects_foreign_plans(small):
    with pytest.raises(FlexnasError):
        small.encode(Plan.teacher(S, 8))  # other T
    with pytest.raises(FlexnasError):
        small.encode(Plan.teacher("DPMSolverMultistepScheduler", 4))  # other scheduler
    sp = SearchSpace(S, 4, (2,), (0, 1))
    with pytest.raises(FlexnasError):
        sp.encode(Plan.teacher(S, 4))  # N=4 not admissible
    with pytest.raises(FlexnasError):
        sp.encode(Plan(S, 4, (Segment(2, 5), Segment(1))))  # branch 5 not in the space


# --------------------------------------------------------------------------- random / remap
def test_random_and_remap_keep_validity():
    rng = np.random.default_rng(0)
    for sp in (SearchSpace(S, 10, (2, 5, 10), tuple(range(6))), SearchSpace(S, 12, (1, 2, 3, 4, 6, 12), (0, 2)),
               SearchSpace(S, 4, (1, 2, 4), (0, 1)), SearchSpace(S, 100, (4, 25), (1,))):
        seen_n = set()
        for _ in range(300):
            x = sp.random(rng)
            assert sp.is_canonical(x), x
            seen_n.add(sp.split(x)[0])
            for n_new in sp.Ns:
                y = sp.remap(x, n_new)
                assert sp.is_canonical(y), (x, n_new, y)
                assert sp.split(y)[0] == n_new
            assert np.array_equal(sp.remap(x, sp.split(x)[0]), x)  # remap to its own N: identity
        assert seen_n == set(sp.Ns)
        for n in sp.Ns:
            assert sp.split(sp.random(rng, n))[0] == n


@pytest.mark.parametrize("mode", ["drop", "reuse"])
def test_a_strength_window_is_valid_exactly_when_a_network_call_runs_in_it(mode):
    """Image-to-image runs the base steps from ``start`` on: a genome is valid exactly when, beyond the
    bounds, the steps the engine then executes (``executed_steps``, counted independently) make a call;
    ``size_distinct_plans`` counts the plans those genomes make."""
    for start in range(4):
        sp = SearchSpace(S, 4, (1, 2, 4), (0, 1), mode, True, start)
        free = SearchSpace(S, 4, (1, 2, 4), (0, 1), mode, True)
        plans = set()
        for x in all_genomes(sp):
            runs = free.is_valid(x) and any(s.kind is not StepKind.NULL for s in executed_steps(free.decode(x), start))
            assert sp.is_valid(x) == runs, (start, list(x))
            if runs:
                plans.add(sp.decode(x))
        assert sp.size_distinct_plans() == len(plans), start


def test_join_reaches_the_strength_window_with_the_fewest_steps():
    sp = SearchSpace(S, 10, (1, 2, 5), (0,), "drop", True, start=4)  # strength 0.6: base steps 4..9 run
    assert list(sp.split(sp.join(1, [0], [3]))[2]) == [5]  # F p p . . ..: steps 0-2 only; now 0-4
    assert list(sp.split(sp.join(2, [0, 0], [3, 0]))[2]) == [3, 1]  # a FULL step at 5
    assert list(sp.split(sp.join(5, [0] * 5, [2, 1, 0, 0, 0]))[2]) == [2, 1, 0, 0, 1]
    assert list(sp.split(sp.join(2, [0, 0], [1, 2]))[2]) == [1, 2]  # already runs: unchanged
    x = sp.join(1, [0], [5])
    x[1 + sp.smax] = 4
    assert not sp.is_valid(x) and SearchSpace(S, 10, (1, 2, 5), (0,), "reuse", True, 4).is_valid(x)
    rng = np.random.default_rng(0)
    for _ in range(300):
        plan = sp.decode(sp.random(rng))
        assert any(s.kind is not StepKind.NULL for s in executed_steps(plan, 4))


def test_remap_maps_segments_in_time():
    sp = SearchSpace(S, 12, (2, 4), (0, 1, 2))
    x = sp.join(2, np.array([1, 2]), np.array([6, 2]))  # L=6
    y = sp.remap(x, 4)  # L=3: segments 0,1 <- old 0; 2,3 <- old 1
    n, b, k = sp.split(y)
    assert n == 4 and list(k) == [3, 3, 1, 1] and list(b) == [1, 1, 0, 0]
    z = sp.remap(y, 2)
    n, b, k = sp.split(z)
    assert n == 2 and list(k) == [6, 2] and list(b) == [1, 0]


# --------------------------------------------------------------------------- sizes
def test_sizes_small_by_hand(small):
    # segment-wise: N=1: (2*4)^1, N=2: (2*2)^2, N=4: (2*1)^4
    assert small.size_segment_wise() == 8 + 16 + 16
    assert small.size_step_wise() == 4 ** 4
    # every genome (inactive genes fixed) counts once in the segment-wise size
    n = 0
    for ni, nn in enumerate(small.Ns):
        n += (len(small.branches) * (small.T // nn)) ** nn
    assert n == 40


def test_sizes_T100_by_hand():
    sp = SearchSpace.build(S, 100, 6)  # every divisor, 6 branches (the embedded model's)
    assert sp.Ns == (1, 2, 4, 5, 10, 20, 25, 50, 100)
    assert sp.branches == tuple(range(6))
    seg = 600 + 300 ** 2 + 150 ** 4 + 120 ** 5 + 60 ** 10 + 30 ** 20 + 24 ** 25 + 12 ** 50 + 6 ** 100
    distinct = 595 + 295 ** 2 + 145 ** 4 + 115 ** 5 + 55 ** 10 + 25 ** 20 + 19 ** 25 + 7 ** 50 + 1 ** 100
    assert sp.size_segment_wise() == seg
    assert sp.size_distinct_plans() == distinct
    assert sp.size_step_wise() == 8 ** 100
    assert sp.size_step_wise() > sp.size_segment_wise() > sp.size_distinct_plans()
    text = sp.describe()
    assert f"{8 ** 100:.3e}" in text and f"{seg:.3e}" in text and f"{distinct:.3e}" in text
    assert "genome length 201" in text

    sp2 = SearchSpace.build(S, 100, 6, Ns=[10, 20], branches=[2, 5])
    assert sp2.size_segment_wise() == (2 * 10) ** 10 + (2 * 5) ** 20
    assert sp2.size_distinct_plans() == 19 ** 10 + 9 ** 20
    assert sp2.size_step_wise() == 4 ** 100


# --------------------------------------------------------------------------- build errors
@pytest.mark.parametrize("kw, words", [
    (dict(Ns=[3]), "divide"),
    (dict(Ns=[2, 4]), "divide"),
    (dict(Ns=[20]), "divide"),
    (dict(Ns=[0]), "divide"),
    (dict(Ns=[-5]), "divide"),
    (dict(branches=[6]), "do not exist"),
    (dict(branches=[0, 7]), "do not exist"),
    (dict(branches=[-1]), "do not exist"),
])
def test_build_errors(kw, words):
    with pytest.raises(FlexnasError, match=words):
        SearchSpace.build(S, 10, 6, **kw)


def test_direct_construction_errors():
    with pytest.raises(FlexnasError):
        SearchSpace(S, 10, (), (0,))
    with pytest.raises(FlexnasError):
        SearchSpace(S, 10, (5,), ())
    with pytest.raises(FlexnasError):
        SearchSpace(S, 10, (5,), (-1,))
    with pytest.raises(FlexnasError, match="no base step runs: the pipeline starts at step 10 of T=10"):
        SearchSpace(S, 10, (5,), (0,), start=10)


def test_build_defaults():
    sp = SearchSpace.build(S, 10, 3, null_mode="reuse")
    assert sp.Ns == (1, 2, 5, 10) and sp.branches == (0, 1, 2) and sp.null_mode == "reuse"
    assert sp.decode(sp.random(np.random.default_rng(1))).null_mode == "reuse"
