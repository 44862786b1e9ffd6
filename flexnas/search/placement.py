"""Placement refinement: the FULL steps of the search's front plans moved along the base schedule.

Where k FULL steps sit decides how close k U-Net calls come to the teacher, and stock spacing is
far from the best there is: on the embedded model, moving stock DDIM-10's steps one at a time while
the paired distance on 64 images fell brought it from 2.144 to 1.835 on 256 images, closer than
stock DDIM-16 (a hand check, README "Search options"). The evolutionary operators redraw whole
segments, which changes a plan's step count and so its speed; a move keeps both, so it is searched
apart, as a local search after the last generation (a memetic step). It starts from each front
plan's FULL steps alone (its PARTIAL steps dropped: the same plan where it has none, else a faster
one), and a refined plan joins the population when it beats its start: pymoo's survival then keeps
it if nothing dominates it (a refined FULL-only front plan dominates its parent: equal MACs, lower
objective). docs/DESIGN.md, section 6.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pymoo.core.callback import Callback
from pymoo.core.population import Population

from flexnas.plan.plan import StepKind
from flexnas.plan.space import SearchSpace
from flexnas.search.operators import full_at

MOVES = (-1, 1, -2, 2, -4, 4)  # base steps a FULL step may move by, in one evaluation batch


def placement(space: SearchSpace, x: np.ndarray) -> np.ndarray | None:
    """The genome of one segment per base step with FULL steps where the plan of ``x`` has its FULL steps, and
    no other active step (``full_at``), where the space lets any base step be skipped (not ``--paper-space``,
    not null mode "reuse", T among the segment counts) and some step can move; else None."""
    if space.T not in space.Ns or space.k_low(space.T).any():
        return None
    y = full_at(space, [i for i, st in enumerate(space.decode(x).steps) if st.kind is StepKind.FULL])
    return y if any(moves(space, y, i) for i in range(int(space.split(y)[2].sum()))) else None


def moves(space: SearchSpace, x: np.ndarray, i: int) -> list[np.ndarray]:
    """Genomes with the ``i``-th FULL step of ``x`` moved by each of ``MOVES``: the steps keep their order,
    and none moves before or from before ``space.start`` (an image-to-image run executes nothing there: such
    a move would change the plan's cost, or nothing)."""
    pos = np.flatnonzero(space.split(x)[2])
    lo = max(pos[i - 1] + 1 if i else 0, space.start)
    hi = pos[i + 1] - 1 if i + 1 < len(pos) else space.T - 1
    return [full_at(space, np.where(np.arange(len(pos)) == i, pos[i] + d, pos))
            for d in MOVES if pos[i] >= space.start and lo <= pos[i] + d <= hi]


def sweep(space: SearchSpace, evaluate: Callable[[list[np.ndarray]], np.ndarray], x: np.ndarray, score: float,
          budget: int) -> tuple[np.ndarray, float, int, bool]:
    """One pass of coordinate descent from genome ``x`` (of objective ``score``; lower is better): each FULL
    step in turn, from the end of the schedule, goes to the best of its ``moves`` (``evaluate`` scores a batch
    of genomes) if that beats the plan so far, until ``budget`` evaluations are spent. Returns the best genome,
    its score, the evaluations spent and whether a step moved.

    From the end: there a move is cheapest (the plans share every step before it, which the prefix
    store samples once) and, on the embedded model, worth most (stock spacing's last step sits at t=0,
    where a U-Net call changes almost nothing: moving it alone to t=10 took DDIM-10 from paired 2.144 to
    2.084 on 256 images)."""
    spent, changed = 0, False
    for i in reversed(range(int(space.split(x)[2].sum()))):  # moves keep the number of FULL steps
        cands = moves(space, x, i)[:budget - spent]
        if not cands:
            continue
        scores = np.asarray(evaluate(cands), dtype=float)
        spent += len(cands)
        j = int(np.argmin(scores))
        if scores[j] < score:
            x, score, changed = cands[j], float(scores[j]), True
        if spent >= budget:
            break
    return x, score, spent, changed


def refine(space: SearchSpace, evaluate: Callable[[list[np.ndarray]], np.ndarray], x: np.ndarray, score: float,
           budget: int) -> tuple[np.ndarray, float, int]:
    """``sweep`` after ``sweep`` until one moves nothing or ``budget`` evaluations are spent. Returns the best
    genome, its score and the evaluations spent."""
    spent, changed = 0, True
    while changed and spent < budget:
        x, score, n, changed = sweep(space, evaluate, x, score, budget - spent)
        spent += n
    return x, score, spent


class PlacementRefinement(Callback):
    """A pymoo callback: after the last generation, the ``placement`` of each of the population's non-dominated,
    feasible plans, where it is feasible too, is refined in rounds, one ``sweep`` per plan and round, the
    fastest plan first, while steps still move and ``evals`` last (through the algorithm's evaluator; starts
    that were never evaluated count); the algorithm's survival takes in the plans that beat their start.
    Rounds rather than an equal share each: a sweep from the end of the schedule that is cut short moves
    only the last steps, and the fast plans, which step reduction is hardest to beat at, come first. Scores
    compare on the screening images: a promoted start counts with its screening score, and refined plans
    are not promoted. A run resumed with more ``--gens`` refines again after its new last generation."""

    def __init__(self, evals: int):
        super().__init__()
        self.evals = evals

    def _update(self, algorithm) -> None:
        problem, pop = algorithm.problem, algorithm.pop
        if algorithm.n_gen < problem.config.gens:
            return
        seen = {}

        def evaluate(X: list[np.ndarray]) -> Population:
            new = Population.new(X=np.array(X))
            algorithm.evaluator.eval(problem, new, algorithm=algorithm)
            seen.update((tuple(ind.X), ind) for ind in new)
            return new

        starts = {tuple(x): x for i in problem.front(pop) if (x := placement(problem.space, pop[i].X)) is not None}
        starts = sorted(starts.values(), key=lambda x: problem.space.split(x)[2].sum())  # the fastest first
        s0, best, todo, left = {}, {}, list(range(len(starts))), self.evals
        while todo and left > 0:  # rounds: one sweep per plan still moving
            moved = []
            for j in todo:
                if left <= 0:
                    break
                if j not in best:  # its first round: the start's score (a start never evaluated costs one)
                    key = problem.keys([starts[j]])[0]
                    left -= key not in problem.cache.records
                    if evaluate([starts[j]])[0].CV[0] > 0:
                        continue
                    s0[j] = problem.records([key])[0][problem.config.objective]
                    best[j] = (starts[j], s0[j])
                x, s, spent, changed = sweep(problem.space, lambda X: evaluate(X).get("F")[:, 0], *best[j], left)
                best[j], left = (x, s), left - spent
                moved += [j] if changed else []
            todo = moved
        out = {tuple(x): seen[tuple(x)] for j, (x, s) in best.items() if s < s0[j]}
        if out:
            algorithm.pop = algorithm.survival.do(problem, Population.merge(pop, Population.create(*out.values())),
                                                  n_survive=len(pop), algorithm=algorithm,
                                                  random_state=algorithm.random_state)
            algorithm._set_optimum()
