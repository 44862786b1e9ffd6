"""`flexnas plan`, `show`, `branches` and `flexnas.apply` on the embedded problem."""

from __future__ import annotations

import json

import pytest
import torch

import flexnas
from flexnas.cli import main
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("args, strip_start, counts", [
    (["--teacher"], "F F F", {"full": 100, "partial": {}, "null": 0}),
    (["--deepcache", "5", "--branch", "2"], "F p2 p2 p2 p2 F", {"full": 20, "partial": {"2": 80}, "null": 0}),
    (["--steps", "20"], "F . . . . F", {"full": 20, "partial": {}, "null": 80}),
    (["--segments", "10", "--branch", "1", "--interval", "4"], "F p1 p1 p1 . . . . . . F",
     {"full": 10, "partial": {"1": 30}, "null": 60}),
])
def test_plan_command_writes_common_plans(capsys, args, strip_start, counts):
    rc, out, err = run(capsys, "plan", "--problem", "fashion-mnist", *args)
    assert rc == 0, err
    plan = Plan.from_json(out)
    assert plan.T == 100 and plan.scheduler == "DDIMScheduler" and plan.strip().startswith(strip_start)
    assert json.loads(json.dumps(plan.counts(), default=str).replace("'", '"')) == \
        {k: ({str(b): n for b, n in v.items()} if isinstance(v, dict) else v) for k, v in counts.items()}


def test_show_prints_strip_and_macs_ratio(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "p.json"
    Plan.uniform("DDIMScheduler", 100, 20, 5, 2).save(path)
    rc, out, err = run(capsys, "show", str(path), "--problem", "fashion-mnist")
    assert rc == 0, err
    assert "F p2 p2 p2 p2 F" in out and "full 20  partial 80 (b2: 80)  null 0" in out
    from flexnas.metrics.macs import count_unet
    from problems.fashion_mnist import load_pipeline

    full, partial = count_unet(load_pipeline().unet, (1, 28, 28))
    ratio = (20 * full + 80 * partial[2]) / (100 * full)
    assert f"ratio to teacher {ratio:.3f}" in out


def test_branches_lists_six_skips(capsys):
    rc, out, _ = run(capsys, "branches", "--problem", "fashion-mnist")
    assert rc == 0 and out.splitlines()[0] == "0\tconv_in" and len(out.splitlines()) == 6


@pytest.mark.parametrize("args, message", [
    (["--deepcache", "5", "--branch", "9"], "branch 9 does not exist"),
    (["--deepcache", "3", "--branch", "1"], "must divide T=100"),
    (["--segments", "10", "--branch", "1", "--interval", "11"], "interval 11 out of range 0..10"),
    (["--segments", "10", "--interval", "3"], "needs a branch"),
    (["--deepcache", "5"], "needs --branch"),
    (["--teacher", "--steps", "10"], "exactly one of"),
    (["--steps", "0"], "--steps 0 must divide"),
    (["--teacher", "--base-steps", "0"], "--base-steps must be positive"),
])
def test_plan_bad_input_is_one_line(capsys, args, message):
    rc, out, err = run(capsys, "plan", "--problem", "fashion-mnist", *args)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_plan_out_never_overwrites(capsys, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("precious")
    rc, _, err = run(capsys, "plan", "--problem", "fashion-mnist", "--teacher", "--out", str(path))
    assert rc == 2 and "already exists" in err and path.read_text() == "precious"


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a flexnas plan"),
    ('{"format": "flexnas-plan", "version": 1, "scheduler": "DDIMScheduler", "T": 10, '
     '"segments": [{"branch": 1, "interval": 7}, {"branch": 1, "interval": 2}]}', "out of range"),
])
def test_show_malformed_plan_is_one_line(capsys, tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    rc, _, err = run(capsys, "show", str(path))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


PLAN_HEAD = '{"format": "flexnas-plan", "version": 1, '


@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not UTF-8 text"),
    ('{"format": "flexnas-plan"}'.encode("utf-16"), "not UTF-8 text"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ((PLAN_HEAD + '"scheduler": "DDIMScheduler", "T": 1000000000, "segments": [{"interval": 1}]}').encode(),
     "T=1000000000 base steps is more than"),
    ((PLAN_HEAD + '"scheduler": null, "T": 10, "segments": [{"interval": 1}]}').encode(), "'scheduler' must name"),
])
def test_unreadable_plans_are_one_line(capsys, tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    rc, _, err = run(capsys, "show", str(path))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_plan_for_another_schedule_names_the_flags(capsys, tmp_path):
    path = tmp_path / "p.json"
    Plan.step_reduction("DDIMScheduler", 50, 10).save(path)
    for command in (["show", str(path)], ["evaluate", "--plan", str(path)],
                    ["sample", "--plan", str(path), "--out", str(tmp_path / "x.png")]):
        rc, _, err = run(capsys, *command, "--problem", "fashion-mnist")
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "T=50" in err and "--base-steps 50" in err, err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("where", ["file_parent", "proc"])
def test_unwritable_out_is_one_line_before_any_work(capsys, tmp_path, where):
    (tmp_path / "file").write_text("x")
    parent = tmp_path / "file" if where == "file_parent" else __import__("pathlib").Path("/proc/nope")
    for command in (["plan", "--teacher", "--out", str(parent / "p.json")],
                    ["sample", "--out", str(parent / "s.png")]):
        rc, out, err = run(capsys, *command, "--problem", "fashion-mnist")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "cannot write into" in err, err
    assert (tmp_path / "file").read_text() == "x"


def test_size_limits_are_checked_first(capsys, tmp_path):
    rc, _, err = run(capsys, "--threads", "100000", "plan", "--problem", "fashion-mnist", "--teacher")
    assert rc == 2 and "--threads 100000 is more than" in err
    rc, _, err = run(capsys, "sample", "--problem", "fashion-mnist", "--images", "1000000000",
                     "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "--images 1000000000 is over the limit" in err and not (tmp_path / "x.png").exists()


def test_broken_pipe_ends_quietly():
    """`flexnas plan ... | head -c 0`: the reader is gone before the first write; no traceback, no
    'Exception ignored', the status a shell reports for SIGPIPE."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "flexnas.cli", "plan", "--problem", "fashion-mnist", "--teacher",
                             "--base-steps", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_unknown_problem_is_one_line(capsys):
    rc, _, err = run(capsys, "branches", "--problem", "nope")
    assert rc == 2 and "unknown problem 'nope'" in err and "fashion-mnist" in err


def test_apply_to_stock_pipeline_matches_engine_and_undoes(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler

    from flexnas.engine.sampler import sample
    from problems.fashion_mnist import load_pipeline

    base = load_pipeline()
    pipe = DDIMPipeline(unet=base.unet, scheduler=DDIMScheduler.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    plan = Plan.uniform("DDIMScheduler", 10, 2, 3, 4)
    path = tmp_path / "plan.json"
    plan.save(path)

    def stock():
        return pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(3),
                    output_type="np").images

    teacher = stock()
    with flexnas.apply(pipe, str(path)) as run_:
        planned = stock()
    assert run_.counter.as_dict() == {"full": 2, "partial": {4: 4}, "null": 4}
    x = sample(pipe.unet, DDIMScheduler.from_config(base.scheduler.config), 10, (2, 1, 28, 28), plan=plan,
               generator=torch.Generator().manual_seed(3))
    engine = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(engine - planned).max() <= 1e-5
    assert abs(planned - teacher).max() > 1e-3  # the plan changed the images
    assert abs(stock() - teacher).max() == 0  # and leaving the context restored the stock pipeline


def test_apply_needs_a_unet_pipeline():
    class NoUnet:
        scheduler = object()

    with pytest.raises(FlexnasError, match="no 'unet'"):
        flexnas.apply(NoUnet(), Plan.teacher("DDIMScheduler", 10))


def test_apply_state_never_leaks_between_calls():
    """A second call, a call after an exception inside the denoising loop, and a call after remove()
    give exactly the planned (resp. stock) images: nothing of one call survives into the next."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from problems.fashion_mnist import load_pipeline

    base = load_pipeline()
    pipe = DDIMPipeline(unet=base.unet, scheduler=DDIMScheduler.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)

    def call():
        return pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(5),
                    output_type="np").images

    stock = call()
    ctl = flexnas.apply(pipe, Plan.uniform("DDIMScheduler", 10, 2, 4, 2))
    first = call()
    assert abs(call() - first).max() == 0

    mid = pipe.unet.mid_block
    calls = {"n": 0}

    def boom(module, args):
        calls["n"] += 1
        if calls["n"] == 2:  # the second FULL step, after the cache was filled once
            raise RuntimeError("interrupted")

    handle = mid.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        call()
    handle.remove()
    assert ctl.partial.state.mode == "off"
    assert abs(call() - first).max() == 0
    ctl.remove()
    assert abs(call() - stock).max() == 0
