"""Plans: which step kind runs at every step of a base sampling schedule.

A plan is pure data. The base schedule of ``T`` steps is cut into ``N`` segments of
equal length ``L = T / N``; segment ``s`` is one FULL step, ``interval - 1`` PARTIAL
steps at ``branch`` and ``L - interval`` NULL steps (docs/DESIGN.md, section 1). Beyond the paper,
a segment after the first may have interval 0: it is skipped whole (L NULL steps), which
lets a plan place its FULL steps anywhere on a grid of N points of the base schedule. In
"drop" mode the first segment may be skipped too (sampling starts at the first active step,
as a stock ``num_inference_steps=k`` run starts below the top of the schedule); in "reuse"
mode the first step must call the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from flexnas.errors import FlexnasError

FORMAT = "flexnas-plan"
FORMAT_VERSION = 1
NULL_MODES = ("drop", "reuse")
MAX_T = 10_000  # base steps; diffusers schedulers train on 1,000 timesteps, and plans list every step
MAX_PLAN_BYTES = 10 * 2**20


class StepKind(str, Enum):
    FULL = "full"
    PARTIAL = "partial"
    NULL = "null"


@dataclass(frozen=True)
class Step:
    """One step of a plan; ``branch`` is set for PARTIAL steps only."""

    kind: StepKind
    branch: int | None = None

    def symbol(self) -> str:
        return {StepKind.FULL: "F", StepKind.NULL: "."}.get(self.kind, f"p{self.branch}")


@dataclass(frozen=True)
class Segment:
    """``interval`` active steps (1 FULL + interval-1 PARTIAL at ``branch``), then NULL steps (0: all NULL)."""

    interval: int
    branch: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int):
            raise FlexnasError(f"segment interval must be an integer, got {self.interval!r}")
        if self.branch is not None and (isinstance(self.branch, bool) or not isinstance(self.branch, int)):
            raise FlexnasError(f"segment branch must be an integer or null, got {self.branch!r}")
        if self.interval <= 1 and self.branch is not None:
            # no PARTIAL step uses the branch: canonical form drops it, so equal plans compare equal
            object.__setattr__(self, "branch", None)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Plan:
    """An immutable sampling plan over a base schedule of ``T`` steps of ``scheduler``."""

    scheduler: str
    T: int
    segments: tuple[Segment, ...]
    null_mode: str = "drop"
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    controlnet_reuse: bool = False  # a pipeline's ControlNet serves the last FULL step's residuals at PARTIAL steps

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(
            s if isinstance(s, Segment) else Segment(*s) for s in self.segments))
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self, num_branches: int | None = None) -> "Plan":
        """Raise ``FlexnasError`` naming the first problem; ``num_branches`` checks branches exist."""
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 1:
            raise FlexnasError(f"T must be a positive integer, got {self.T!r}")
        if self.T > MAX_T:
            raise FlexnasError(f"T={self.T} base steps is more than flexnas handles ({MAX_T}): diffusion models "
                               "train on about 1,000 timesteps, so use at most that many")
        if self.null_mode not in NULL_MODES:
            raise FlexnasError(f"null_mode must be one of {NULL_MODES}, got {self.null_mode!r}")
        if not isinstance(self.controlnet_reuse, bool):
            raise FlexnasError(f"controlnet_reuse must be true or false, got {self.controlnet_reuse!r}")
        n = len(self.segments)
        if n == 0 or self.T % n:
            raise FlexnasError(f"N={n} segments must divide T={self.T}: admissible N are {divisors(self.T)}")
        L = self.T // n
        if all(s.interval == 0 for s in self.segments):
            raise FlexnasError("every segment is skipped: a plan needs at least one FULL step")
        for i, s in enumerate(self.segments):
            low = 1 if i == 0 and self.null_mode == "reuse" else 0  # reuse needs a first network output
            if not low <= s.interval <= L:
                why = " (null mode reuse: the first step must call the network)" if s.interval == 0 else ""
                raise FlexnasError(f"segment {i}: interval {s.interval} out of range {low}..{L} (L = T/N = "
                                   f"{self.T}/{n}){why}")
            if s.interval > 1 and s.branch is None:
                raise FlexnasError(f"segment {i}: interval {s.interval} has partial steps and needs a branch")
            if s.branch is not None and s.branch < 0:
                raise FlexnasError(f"segment {i}: branch {s.branch} must be >= 0")
            if num_branches is not None and s.branch is not None and s.branch >= num_branches:
                raise FlexnasError(f"segment {i}: branch {s.branch} does not exist: the model has branches "
                                   f"0..{num_branches - 1}")
        return self

    # ----------------------------------------------------------------- derived
    @property
    def N(self) -> int:
        return len(self.segments)

    @property
    def L(self) -> int:
        return self.T // self.N

    @property
    def steps(self) -> tuple[Step, ...]:
        out: list[Step] = []
        for s in self.segments:
            if s.interval:
                out.append(Step(StepKind.FULL))
            out.extend(Step(StepKind.PARTIAL, s.branch) for _ in range(s.interval - 1))
            out.extend(Step(StepKind.NULL) for _ in range(self.L - s.interval))
        return tuple(out)

    def counts(self) -> dict[str, Any]:
        """Planned number of FULL, PARTIAL (per branch) and NULL steps."""
        partial: dict[int, int] = {}
        for s in self.segments:
            if s.interval > 1:
                partial[s.branch] = partial.get(s.branch, 0) + s.interval - 1
        full = sum(1 for s in self.segments if s.interval)
        return {"full": full, "partial": dict(sorted(partial.items())),
                "null": self.T - full - sum(partial.values())}

    def strip(self) -> str:
        """The step-kind strip, e.g. ``F p2 p2 . . F p2 p2 . .``."""
        return " ".join(s.symbol() for s in self.steps)

    def active_indices(self) -> list[int]:
        """Indices of the steps that evaluate the network (FULL or PARTIAL)."""
        return [i for i, s in enumerate(self.steps) if s.kind is not StepKind.NULL]

    # ----------------------------------------------------------------- common plans
    @classmethod
    def teacher(cls, scheduler: str, T: int, null_mode: str = "drop") -> "Plan":
        return cls(scheduler, T, tuple(Segment(1) for _ in range(T)), null_mode, {"name": "teacher"})

    @classmethod
    def uniform(cls, scheduler: str, T: int, n: int, interval: int, branch: int | None,
                null_mode: str = "drop", name: str | None = None) -> "Plan":
        """N equal segments with the same (branch, interval)."""
        if n < 1 or T % n:
            raise FlexnasError(f"N={n} segments must divide T={T}: admissible N are {divisors(T)}")
        meta = {"name": name or f"uniform N={n} b={branch} k={interval}"}
        return cls(scheduler, T, tuple(Segment(interval, branch) for _ in range(n)), null_mode, meta)

    @classmethod
    def deepcache(cls, scheduler: str, T: int, interval: int, branch: int, null_mode: str = "drop") -> "Plan":
        """DeepCache's uniform schedule: a FULL step every ``interval`` steps, PARTIAL in between."""
        if interval < 1 or T % interval:
            raise FlexnasError(f"DeepCache interval {interval} must divide T={T}: choose from {divisors(T)}")
        return cls.uniform(scheduler, T, T // interval, interval, branch, null_mode,
                           name=f"deepcache N={interval} b={branch}")

    @classmethod
    def step_reduction(cls, scheduler: str, T: int, steps: int, null_mode: str = "drop") -> "Plan":
        """Plain step reduction: ``steps`` FULL steps, evenly spread over the base schedule."""
        if steps < 1 or T % steps:
            raise FlexnasError(f"--steps {steps} must divide T={T}: choose from {divisors(T)}")
        return cls.uniform(scheduler, T, steps, 1, None, null_mode, name=f"steps {steps}")

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "scheduler": self.scheduler, "T": self.T, "N": self.N, "null_mode": self.null_mode,
            "segments": [{"branch": s.branch, "interval": s.interval} for s in self.segments],
            "strip": self.strip(), "meta": dict(self.meta),
            **({"controlnet_reuse": True} if self.controlnet_reuse else {}),  # plans without a ControlNet: as before
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise FlexnasError(f"not a flexnas plan: expected a JSON object with \"format\": \"{FORMAT}\"")
        if d.get("version") != FORMAT_VERSION:
            raise FlexnasError(f"plan format version {d.get('version')!r} is not supported (this flexnas reads "
                               f"version {FORMAT_VERSION})")
        for key in ("scheduler", "T", "segments"):
            if key not in d:
                raise FlexnasError(f"plan JSON lacks the field {key!r}")
        segs = d["segments"]
        if not isinstance(segs, list) or not all(isinstance(s, dict) and "interval" in s for s in segs):
            raise FlexnasError("plan JSON field 'segments' must be a list of {\"branch\": .., \"interval\": ..}")
        if not isinstance(d["scheduler"], str) or not d["scheduler"]:
            raise FlexnasError("plan JSON field 'scheduler' must name a diffusers scheduler class, e.g. \"DDIMScheduler\"")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise FlexnasError("plan JSON field 'meta' must be an object")
        plan = cls(str(d["scheduler"]), d["T"], tuple(Segment(s["interval"], s.get("branch")) for s in segs),
                   d.get("null_mode", "drop"), dict(meta), d.get("controlnet_reuse", False))
        if "N" in d and d["N"] != plan.N:
            raise FlexnasError(f"plan JSON says N={d['N']} but lists {plan.N} segments")
        return plan

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise FlexnasError(f"plan is not valid JSON ({e.msg} at line {e.lineno})") from None
        except RecursionError:
            raise FlexnasError("plan JSON is nested too deeply to be a flexnas plan") from None
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise FlexnasError(f"plan file {p} does not exist")
        try:
            if p.stat().st_size > MAX_PLAN_BYTES:
                raise FlexnasError(f"plan file {p} is over {MAX_PLAN_BYTES >> 20} MB: not a flexnas plan")
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise FlexnasError(f"cannot read plan file {p}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise FlexnasError(f"plan file {p} is not UTF-8 text: give a plan JSON file written by flexnas") from None
        return cls.from_json(text)

    def with_meta(self, **meta: Any) -> "Plan":
        return replace(self, meta={**self.meta, **meta})

