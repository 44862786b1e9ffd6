"""Placement refinement (flexnas.search.placement): moves, the genomes that can move, the coordinate descent."""

from __future__ import annotations

import numpy as np
import pytest

from flexnas.plan.plan import StepKind
from flexnas.plan.space import SearchSpace
from flexnas.search.operators import full_at
from flexnas.search.placement import moves, placement, refine

S = "DDIMScheduler"


def skip_space(T: int = 10, start: int = 0, null_mode: str = "drop") -> SearchSpace:
    return SearchSpace.build(S, T, 2, null_mode=null_mode, skip=True, start=start)


def fulls(space: SearchSpace, x) -> list[int]:
    return space.decode(x).active_indices()


def test_full_at_places_full_steps_and_nothing_else():
    plan = skip_space().decode(full_at(skip_space(), [2, 5, 9]))
    assert [s.kind for s in plan.steps] == [StepKind.FULL if i in (2, 5, 9) else StepKind.NULL for i in range(10)]
    assert plan.N == 10 and plan.counts() == {"full": 3, "partial": {}, "null": 7}


def test_moves_of_one_step_keep_the_order_and_the_count():
    sp = skip_space()
    x = full_at(sp, [2, 5, 9])
    got = sorted(fulls(sp, m)[1] for m in moves(sp, x, 1))
    assert got == [3, 4, 6, 7]  # 5 +- 1, 2 (+-4 would pass a neighbour: 1 < 3, 9 is taken)
    for m in moves(sp, x, 1):
        assert sp.is_canonical(m) and len(fulls(sp, m)) == 3 and fulls(sp, m)[0::2] == [2, 9]
    assert sorted(fulls(sp, m)[0] for m in moves(sp, x, 0)) == [0, 1, 3, 4]
    assert sorted(fulls(sp, m)[2] for m in moves(sp, x, 2)) == [7, 8]


def test_no_move_reaches_before_the_start_of_an_image_to_image_window():
    """Before ``start`` nothing runs: a step moved there would change the plan's cost, one moved within it nothing."""
    sp = skip_space(start=5)
    x = full_at(sp, [2, 5, 9])
    assert sorted(fulls(sp, m)[1] for m in moves(sp, x, 1)) == [6, 7]
    assert moves(sp, x, 0) == []


def test_placement_is_the_plans_full_steps_one_segment_per_base_step():
    sp = skip_space()
    x = sp.join(5, np.zeros(5, int), np.array([1, 0, 1, 1, 0]))  # N=5: FULL at base steps 0, 4, 6
    y = placement(sp, x)
    assert sp.split(y)[0] == 10 and sp.decode(y).steps == sp.decode(x).steps
    z = placement(sp, sp.join(5, np.ones(5, int), np.array([2, 0, 1, 1, 0])))  # F p1 . . F . F . . .
    assert sp.decode(z).strip() == "F . . . F . F . . ."  # its PARTIAL step dropped: a faster plan
    assert placement(SearchSpace.build(S, 10, 2, skip=False), sp.join(10, np.zeros(10, int), np.ones(10, int))) is None
    assert placement(skip_space(null_mode="reuse"), x) is None  # the first base step cannot be skipped there
    assert placement(sp, sp.join(10, np.zeros(10, int), np.ones(10, int))) is None  # the teacher: nothing can move


def test_refine_reaches_a_reachable_optimum_and_respects_its_budget():
    """An objective whose optimum is known (distance of the FULL steps to a target placement): the descent
    reaches it, never accepts a worse plan, and scores no more genomes than its budget."""
    sp = skip_space(T=30)
    target = np.array([3, 11, 18, 26])
    calls = []

    def evaluate(X):
        calls.append(len(X))
        return [float(np.abs(np.array(fulls(sp, x)) - target).sum()) for x in X]

    x0 = full_at(sp, [0, 8, 20, 29])
    x, score, spent = refine(sp, evaluate, x0, evaluate([x0])[0], budget=500)
    assert fulls(sp, x) == target.tolist() and score == 0.0 and spent == sum(calls[1:]) <= 500
    calls.clear()
    x, score, spent = refine(sp, evaluate, x0, 18.0, budget=7)
    assert spent == sum(calls) == 7 and score < 18.0 and score == evaluate([x])[0]
    assert refine(sp, evaluate, x0, -1.0, budget=50)[0] is x0  # nothing beats it: the start comes back


@pytest.mark.parametrize("k", [5, 10, 13])
def test_refined_stock_spacing_keeps_its_speed(k):
    """Every move keeps the number of U-Net calls: the refined plan runs as fast as the stock-spaced one."""
    from flexnas.search.operators import stock_spaced

    sp = skip_space(T=100)
    x = stock_spaced(sp, k)
    rng = np.random.default_rng(k)

    def evaluate(X):
        return rng.random(len(X)).tolist()

    y, _, _ = refine(sp, evaluate, x, 1.0, budget=60)
    assert sp.decode(y).counts() == sp.decode(x).counts() and len(fulls(sp, y)) == k
