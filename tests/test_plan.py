"""Plans: steps, strips, counts, JSON round trip, validation errors, canonical form."""

from __future__ import annotations

import json

import pytest

from flexnas.errors import FlexnasError
from flexnas.plan.plan import FORMAT, FORMAT_VERSION, Plan, Segment, Step, StepKind

F, N_ = Step(StepKind.FULL), Step(StepKind.NULL)


def P(b):
    return Step(StepKind.PARTIAL, b)


# ----------------------------------------------------------------------------- steps, strips, counts
def test_uniform_strip_steps_counts():
    plan = Plan.uniform("DDIMScheduler", 10, 2, 2, 3)
    assert plan.strip() == "F p3 . . . F p3 . . ."
    assert plan.N == 2 and plan.L == 5 and plan.T == 10
    assert plan.steps == (F, P(3), N_, N_, N_, F, P(3), N_, N_, N_)
    assert plan.counts() == {"full": 2, "partial": {3: 2}, "null": 6}
    assert plan.active_indices() == [0, 1, 5, 6]
    assert plan.segments == (Segment(2, 3), Segment(2, 3))


def test_uniform_full_interval_has_no_null():
    plan = Plan.uniform("DDIMScheduler", 6, 2, 3, 0)
    assert plan.strip() == "F p0 p0 F p0 p0"
    assert plan.counts() == {"full": 2, "partial": {0: 4}, "null": 0}


def test_deepcache_strip_and_counts():
    plan = Plan.deepcache("DDIMScheduler", 10, 5, 2)
    assert plan.strip() == "F p2 p2 p2 p2 F p2 p2 p2 p2"
    assert plan.N == 2
    assert plan.counts() == {"full": 2, "partial": {2: 8}, "null": 0}
    plan = Plan.deepcache("DDIMScheduler", 6, 2, 1)
    assert plan.strip() == "F p1 F p1 F p1"
    assert plan.counts() == {"full": 3, "partial": {1: 3}, "null": 0}
    assert plan.active_indices() == list(range(6))


def test_step_reduction_strip_and_counts():
    plan = Plan.step_reduction("DDIMScheduler", 10, 5)
    assert plan.strip() == "F . F . F . F . F ."
    assert plan.counts() == {"full": 5, "partial": {}, "null": 5}
    assert plan.active_indices() == [0, 2, 4, 6, 8]
    assert all(s.branch is None for s in plan.segments)
    assert Plan.step_reduction("DDIMScheduler", 10, 2).strip() == "F . . . . F . . . ."


def test_teacher_strip_and_counts():
    plan = Plan.teacher("PNDMScheduler", 4)
    assert plan.strip() == "F F F F"
    assert plan.steps == (F,) * 4
    assert plan.counts() == {"full": 4, "partial": {}, "null": 0}
    assert plan.null_mode == "drop" and plan.scheduler == "PNDMScheduler"
    assert Plan.teacher("DDIMScheduler", 4, "reuse").null_mode == "reuse"


def test_mixed_segments_strip_and_counts():
    plan = Plan("DDIMScheduler", 9, (Segment(3, 1), Segment(1), Segment(2, 4)), "reuse")
    assert plan.strip() == "F p1 p1 F . . F p4 ."
    assert plan.counts() == {"full": 3, "partial": {1: 2, 4: 1}, "null": 3}
    # segments also accept (interval, branch) pairs, in Segment's own order
    assert Plan("DDIMScheduler", 9, ((3, 1), (1,), (2, 4)), "reuse") == plan


def test_symbols():
    assert F.symbol() == "F" and N_.symbol() == "." and P(7).symbol() == "p7"


# ----------------------------------------------------------------------------- JSON
def test_json_round_trip():
    plan = Plan("DPMSolverMultistepScheduler", 12, (Segment(3, 2), Segment(1), Segment(2, 0)), "reuse",
                {"name": "x", "score": 1.5})
    d = json.loads(plan.to_json())
    assert d["format"] == FORMAT and d["version"] == FORMAT_VERSION
    assert d["N"] == 3 and d["T"] == 12 and d["strip"] == plan.strip()
    back = Plan.from_json(plan.to_json())
    assert back == plan
    assert back.meta == plan.meta
    assert back.strip() == plan.strip() and back.null_mode == "reuse"


def test_save_load_round_trip(tmp_path):
    plan = Plan.uniform("DDIMScheduler", 10, 2, 2, 3, null_mode="reuse")
    path = tmp_path / "plan.json"
    plan.save(path)
    back = Plan.load(path)
    assert back == plan and back.meta == plan.meta
    assert back.strip() == "F p3 . . . F p3 . . ."


def test_load_missing_file(tmp_path):
    with pytest.raises(FlexnasError, match="does not exist"):
        Plan.load(tmp_path / "nope.json")


def test_with_meta_keeps_plan():
    plan = Plan.teacher("DDIMScheduler", 4)
    other = plan.with_meta(problem="p")
    assert other == plan and other.meta == {"name": "teacher", "problem": "p"}


# ----------------------------------------------------------------------------- validation errors
def test_n_must_divide_t():
    with pytest.raises(FlexnasError, match=r"N=3 segments must divide T=10"):
        Plan.uniform("DDIMScheduler", 10, 3, 1, None)
    with pytest.raises(FlexnasError, match=r"N=3 segments must divide T=10.*\[1, 2, 5, 10\]"):
        Plan("DDIMScheduler", 10, (Segment(1),) * 3)
    with pytest.raises(FlexnasError, match="N=0"):
        Plan("DDIMScheduler", 10, ())
    with pytest.raises(FlexnasError, match="DeepCache interval 3 must divide T=10"):
        Plan.deepcache("DDIMScheduler", 10, 3, 1)
    with pytest.raises(FlexnasError, match="must divide T=10"):
        Plan.step_reduction("DDIMScheduler", 10, 4)


@pytest.mark.parametrize("interval", [6, -1])
def test_interval_out_of_range(interval):
    with pytest.raises(FlexnasError, match=rf"interval {interval} out of range 0\.\.5"):
        Plan("DDIMScheduler", 10, (Segment(interval, 1), Segment(1)))


def test_skipped_segments():
    """Interval 0 skips a segment (all NULL); in reuse mode not the first; never every segment."""
    plan = Plan("DDIMScheduler", 10, (Segment(0), Segment(2, 1)))
    assert plan.strip() == ". . . . . F p1 . . ." and plan.counts() == {"full": 1, "partial": {1: 1}, "null": 8}
    assert Segment(0, 3).branch is None  # no PARTIAL step uses it: canonical form drops it
    with pytest.raises(FlexnasError, match=r"interval 0 out of range 1\.\.5.*reuse"):
        Plan("DDIMScheduler", 10, (Segment(0), Segment(1)), "reuse")
    assert Plan("DDIMScheduler", 10, (Segment(1), Segment(0)), "reuse").counts()["null"] == 9
    with pytest.raises(FlexnasError, match="at least one FULL step"):
        Plan("DDIMScheduler", 10, (Segment(0), Segment(0)))


def test_interval_needs_branch():
    with pytest.raises(FlexnasError, match="segment 1: interval 2 has partial steps and needs a branch"):
        Plan("DDIMScheduler", 10, (Segment(1), Segment(2)))


def test_negative_branch():
    with pytest.raises(FlexnasError, match=r"branch -1 must be >= 0"):
        Plan("DDIMScheduler", 10, (Segment(2, -1), Segment(1)))


def test_branch_beyond_model():
    plan = Plan.uniform("DDIMScheduler", 10, 2, 2, 6)
    assert plan.validate(7) is plan
    with pytest.raises(FlexnasError, match=r"branch 6 does not exist.*0\.\.5"):
        plan.validate(6)


def test_bad_t():
    with pytest.raises(FlexnasError, match="T must be a positive integer"):
        Plan("DDIMScheduler", 0, (Segment(1),))
    with pytest.raises(FlexnasError, match="T must be a positive integer"):
        Plan("DDIMScheduler", 2.0, (Segment(1),))


def test_bad_null_mode():
    with pytest.raises(FlexnasError, match=r"null_mode must be one of.*'skip'"):
        Plan("DDIMScheduler", 4, (Segment(1),) * 4, "skip")


def test_non_integer_interval():
    with pytest.raises(FlexnasError, match=r"interval must be an integer, got 2\.0"):
        Segment(2.0, 1)
    with pytest.raises(FlexnasError, match="interval must be an integer, got True"):
        Segment(True)
    with pytest.raises(FlexnasError, match="branch must be an integer or null"):
        Segment(2, "1")
    d = Plan.uniform("DDIMScheduler", 10, 2, 2, 3).to_dict()
    d["segments"][0]["interval"] = "2"
    with pytest.raises(FlexnasError, match="interval must be an integer"):
        Plan.from_dict(d)


def test_malformed_json():
    with pytest.raises(FlexnasError, match="not valid JSON"):
        Plan.from_json("{not json")
    with pytest.raises(FlexnasError, match="not a flexnas plan"):
        Plan.from_json("[1, 2]")


def test_wrong_format_field():
    d = Plan.teacher("DDIMScheduler", 4).to_dict()
    d["format"] = "something-else"
    with pytest.raises(FlexnasError, match="not a flexnas plan"):
        Plan.from_dict(d)
    del d["format"]
    with pytest.raises(FlexnasError, match="not a flexnas plan"):
        Plan.from_dict(d)


def test_wrong_version():
    d = Plan.teacher("DDIMScheduler", 4).to_dict()
    d["version"] = FORMAT_VERSION + 1
    with pytest.raises(FlexnasError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        Plan.from_json(json.dumps(d))


@pytest.mark.parametrize("field", ["scheduler", "T", "segments"])
def test_missing_fields(field):
    d = Plan.teacher("DDIMScheduler", 4).to_dict()
    del d[field]
    with pytest.raises(FlexnasError, match=f"lacks the field '{field}'"):
        Plan.from_dict(d)


def test_malformed_segments():
    d = Plan.teacher("DDIMScheduler", 4).to_dict()
    d["segments"] = [{"branch": None}] * 4
    with pytest.raises(FlexnasError, match="'segments' must be a list"):
        Plan.from_dict(d)
    d["segments"] = "F F F F"
    with pytest.raises(FlexnasError, match="'segments' must be a list"):
        Plan.from_dict(d)


def test_n_field_mismatch():
    d = Plan.uniform("DDIMScheduler", 10, 2, 2, 3).to_dict()
    d["N"] = 5
    with pytest.raises(FlexnasError, match="says N=5 but lists 2 segments"):
        Plan.from_dict(d)


def test_invalid_plan_in_json_is_rejected():
    d = Plan.uniform("DDIMScheduler", 10, 2, 2, 3).to_dict()
    d["segments"][0]["interval"] = 9
    with pytest.raises(FlexnasError, match="out of range"):
        Plan.from_json(json.dumps(d))
    d = Plan.uniform("DDIMScheduler", 10, 2, 2, 3).to_dict()
    d["null_mode"] = "bogus"
    with pytest.raises(FlexnasError, match="null_mode"):
        Plan.from_dict(d)


# ----------------------------------------------------------------------------- canonical form
def test_interval_one_drops_branch():
    assert Segment(1, 4) == Segment(1) and Segment(1, 4).branch is None
    a = Plan("DDIMScheduler", 10, (Segment(1, 3), Segment(2, 2)))
    b = Plan("DDIMScheduler", 10, (Segment(1), Segment(2, 2)))
    assert a == b and hash(a) == hash(b)
    assert a.strip() == b.strip() == "F . . . . F p2 . . ."
    assert a.to_json() == b.to_json()
    assert Plan.uniform("DDIMScheduler", 10, 5, 1, 3) == Plan.step_reduction("DDIMScheduler", 10, 5)
    # from JSON too
    d = b.to_dict()
    d["segments"][0]["branch"] = 5
    assert Plan.from_dict(d) == b


def test_meta_not_in_equality():
    a = Plan.teacher("DDIMScheduler", 4)
    assert a == a.with_meta(name="other")
    assert a != Plan.teacher("DDIMScheduler", 4, "reuse")
    assert a != Plan.teacher("PNDMScheduler", 4)
