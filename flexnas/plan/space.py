"""The segment-wise search space and its integer genome (docs/DESIGN.md, section 3).

Genome = ``[n_index, b_1..b_Smax, k_1..k_Smax]``: ``n_index`` picks N among the admissible
segment counts, ``b_s`` indexes the candidate branches and ``k_s`` is segment ``s``'s
interval. Genes of segments beyond N are inactive; canonical genomes set them to
(b=0, k=1), and set ``b_s = 0`` where ``k_s = 1`` (no PARTIAL step uses the branch), so
two genomes decode to the same plan exactly when their canonical forms are equal.

With ``skip`` (beyond the paper), segments after the first may take interval 0 and be
skipped whole: FULL steps can then sit anywhere on a grid of N points (timestep
placement as genes), so e.g. 14 FULL steps are reachable with T = 100.

With ``start`` > 0 (image-to-image strength: the pipeline runs the base steps from ``start`` on),
a valid plan makes a network call there, and ``join`` makes every genome do so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan, Segment, divisors


@dataclass(frozen=True)
class SearchSpace:
    scheduler: str
    T: int
    Ns: tuple[int, ...]
    branches: tuple[int, ...]
    null_mode: str = "drop"
    skip: bool = False
    start: int = 0  # the first base step the pipeline runs (engine.steps.first_step)

    def __post_init__(self) -> None:
        object.__setattr__(self, "Ns", tuple(sorted(set(int(n) for n in self.Ns))))
        object.__setattr__(self, "branches", tuple(sorted(set(int(b) for b in self.branches))))
        if not self.Ns:
            raise FlexnasError("the search space needs at least one segment count N")
        bad = [n for n in self.Ns if n < 1 or self.T % n]
        if bad:
            raise FlexnasError(f"segment counts {bad} do not divide T={self.T}: admissible N are {divisors(self.T)}")
        if not self.branches or min(self.branches) < 0:
            raise FlexnasError("the search space needs at least one branch, all >= 0")
        if not 0 <= self.start < self.T:
            raise FlexnasError(f"no base step runs: the pipeline starts at step {self.start} of T={self.T} "
                               "(raise the image-to-image strength or the step count)")

    @classmethod
    def build(cls, scheduler: str, T: int, num_branches: int, Ns: list[int] | None = None,
              branches: list[int] | None = None, null_mode: str = "drop", skip: bool = False,
              start: int = 0) -> "SearchSpace":
        """Default: every divisor of T, every branch of the model."""
        if Ns is not None and not Ns:
            raise FlexnasError("no segment counts given: list admissible N, e.g. --segments 5,10,20")
        if branches is not None and not branches:
            raise FlexnasError("no branches given: list candidate branches, e.g. --branches 0,1,2")
        branches = list(range(num_branches)) if branches is None else branches
        bad = [b for b in branches if not 0 <= b < num_branches]
        if bad:
            raise FlexnasError(f"branches {bad} do not exist: the model has branches 0..{num_branches - 1}")
        return cls(scheduler, T, tuple(divisors(T) if Ns is None else Ns), tuple(branches), null_mode, skip, start)

    # ------------------------------------------------------------------ genome layout
    @property
    def smax(self) -> int:
        return max(self.Ns)

    @property
    def n_var(self) -> int:
        return 1 + 2 * self.smax

    @property
    def lmax(self) -> int:
        return self.T // min(self.Ns)

    def k_low(self, n: int) -> np.ndarray:
        """Lowest interval of each of N segments: 1, or 0 when segments may be skipped (the first
        only in "drop" mode: "reuse" needs a first network output)."""
        low = np.full(n, 0 if self.skip else 1, dtype=int)
        if self.null_mode == "reuse":
            low[0] = 1
        return low

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.smax
        xl = np.concatenate([[0], np.zeros(s), self.k_low(s)]).astype(int)
        xu = np.concatenate([[len(self.Ns) - 1], np.full(s, len(self.branches) - 1), np.full(s, self.lmax)]).astype(int)
        return xl, xu

    def split(self, x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """(N, branch genes, interval genes) of the active segments."""
        n = self.Ns[int(x[0])]
        s = self.smax
        return n, np.asarray(x[1:1 + n], dtype=int), np.asarray(x[1 + s:1 + s + n], dtype=int)

    def join(self, n: int, b: np.ndarray, k: np.ndarray) -> np.ndarray:
        """The canonical genome of N segments with branch genes ``b`` and intervals ``k``; a genome
        whose plan would make no network call (from ``start`` on) gets its last (lowest-noise) segment's
        interval raised until it does: the fewest steps that make the plan run."""
        s = self.smax
        x = np.zeros(self.n_var, dtype=int)
        x[0] = self.Ns.index(n)
        x[1 + s:] = 1
        k = np.array(k, dtype=int)
        if not self._runs(n, k):
            k[-1] = max(k[-1], 1, self.start - (n - 1) * (self.T // n) + 1)
        x[1:1 + n] = np.where(k > 1, b, 0)
        x[1 + s:1 + s + n] = k
        return x

    # ------------------------------------------------------------------ validity
    def is_valid(self, x: np.ndarray) -> bool:
        x = np.asarray(x)
        if x.shape != (self.n_var,) or not 0 <= x[0] < len(self.Ns):
            return False
        n, b, k = self.split(x)
        L = self.T // n
        return bool(self._runs(n, k) and np.all((k >= self.k_low(n)) & (k <= L))
                    and np.all((b >= 0) & (b < len(self.branches))))

    def _runs(self, n: int, k: np.ndarray) -> bool:
        """Whether intervals ``k`` of N segments make a network call from base step ``start`` on. In "reuse"
        mode the first step run always does (a NULL step without an output to reuse runs FULL, as
        ``engine.steps.executed_steps`` counts it); in "drop" mode an active step must lie there."""
        L, active = self.T // n, np.flatnonzero(k)
        return bool(len(active)) and (self.null_mode == "reuse" or active[-1] * L + k[active[-1]] - 1 >= self.start)

    def canonical(self, x: np.ndarray) -> np.ndarray:
        """Inactive genes fixed, branch genes of interval-1 segments zeroed."""
        if not self.is_valid(x):
            raise FlexnasError(f"genome {list(np.asarray(x))} is not valid in this space")
        n, b, k = self.split(x)
        return self.join(n, b, k)

    def is_canonical(self, x: np.ndarray) -> bool:
        return self.is_valid(x) and np.array_equal(np.asarray(x, dtype=int), self.canonical(x))

    # ------------------------------------------------------------------ decode / encode
    def decode(self, x: np.ndarray) -> Plan:
        """Genome -> plan (pure)."""
        if not self.is_valid(x):
            raise FlexnasError(f"genome {list(np.asarray(x))} is not valid in this space")
        n, b, k = self.split(x)
        segs = tuple(Segment(int(ki), self.branches[int(bi)] if ki > 1 else None) for bi, ki in zip(b, k))
        return Plan(self.scheduler, self.T, segs, self.null_mode)

    def encode(self, plan: Plan) -> np.ndarray:
        """Plan -> canonical genome (inverse of ``decode`` on canonical genomes)."""
        if plan.scheduler != self.scheduler or plan.T != self.T:
            raise FlexnasError(f"plan ({plan.scheduler}, T={plan.T}) is not in this space "
                               f"({self.scheduler}, T={self.T})")
        if plan.N not in self.Ns:
            raise FlexnasError(f"plan has N={plan.N} segments; this space admits N in {list(self.Ns)}")
        b = []
        for s in plan.segments:
            if s.branch is not None and s.branch not in self.branches:
                raise FlexnasError(f"plan uses branch {s.branch}; this space has branches {list(self.branches)}")
            b.append(self.branches.index(s.branch) if s.branch is not None else 0)
        return self.join(plan.N, np.array(b), np.array([s.interval for s in plan.segments]))

    def key(self, x: np.ndarray) -> tuple[int, ...]:
        """Hashable identity of a genome's plan."""
        return tuple(int(v) for v in self.canonical(x))

    # ------------------------------------------------------------------ random genomes
    def random(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """A uniformly drawn valid canonical genome (N uniform over the admissible ones)."""
        n = n if n is not None else self.Ns[int(rng.integers(len(self.Ns)))]
        L = self.T // n
        return self.join(n, rng.integers(0, len(self.branches), n), rng.integers(self.k_low(n), L + 1))

    def remap(self, x: np.ndarray, n_new: int) -> np.ndarray:
        """Change N, mapping each new segment to the old one at the same place in time."""
        n, b, k = self.split(x)
        L, L_new = self.T // n, self.T // n_new
        src = (np.arange(n_new) * n) // n_new
        k_new = np.clip(np.round(k[src] * L_new / L).astype(int), self.k_low(n_new), L_new)
        return self.join(n_new, b[src], k_new)

    # ------------------------------------------------------------------ size
    def size_segment_wise(self) -> int:
        """sum over N of (B * L)^N: genomes of the segment-wise space (docs/DESIGN.md, section 3)."""
        B = len(self.branches)
        return sum((B * (self.T // n)) ** n for n in self.Ns)

    def size_distinct_plans(self) -> int:
        """Distinct plans: a segment has 1 + B * (L - 1) choices (interval 1 needs no branch), one more where it
        may be skipped, less the plans that make no network call from ``start`` on (``_runs``): in "drop"
        mode those whose every segment is skipped or active only before ``start``, in "reuse" mode the
        plan that skips every segment."""
        B, total = len(self.branches), 0
        for n in self.Ns:
            L, skip = self.T // n, (self.k_low(n) == 0).astype(object)
            choices = 1 + B * (L - 1) + skip
            idle = skip.copy()  # a segment's choices with no active step from start on
            if self.null_mode == "drop":  # intervals k <= m keep a segment's active steps before start
                m = np.clip(self.start - np.arange(n) * L, 0, L)
                idle += np.where(m > 0, 1 + B * (m - 1), 0).astype(object)
            total += int(np.prod(choices)) - int(np.prod(idle))
        return total

    def size_step_wise(self) -> int:
        """K^T for a step-wise search with K = FULL, NULL and PARTIAL at each branch."""
        return (2 + len(self.branches)) ** self.T

    def describe(self) -> str:
        def f(v: int) -> str:
            if v <= 10**6:
                return str(v)
            try:
                return f"{v:.3e}"
            except OverflowError:  # beyond a float's range (long schedules)
                return f"10^{len(str(v)) - 1}"

        return (f"{self.scheduler} T={self.T}  N in {list(self.Ns)}  branches {list(self.branches)}  "
                f"null mode {self.null_mode}{'  skippable segments' if self.skip else ''}\n"
                f"genome length {self.n_var}\n"
                f"segment-wise size  sum_N (B*L)^N = {f(self.size_segment_wise())}  "
                f"(distinct plans {f(self.size_distinct_plans())})\n"
                f"step-wise size     (2+B)^T       = {f(self.size_step_wise())}")
