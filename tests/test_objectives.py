"""Objectives: FID/rFID through torch-fidelity, the teacher cache, MACs (fvcore), errors and the CLI.

Runs on the embedded Fashion-MNIST problem with a short base schedule (T=10, 32 images in
one batch) so the whole file stays well under a few minutes on 2 CPU cores. The embedded
weights may be updated by training while the tests run: the model is loaded once per module.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from flexnas.engine.partial import PartialUNet
from flexnas.errors import FlexnasError
from flexnas.metrics.evaluator import Evaluator
from flexnas.metrics.features import INCEPTION, INCEPTION_FILE, inception_weights, resolve_extractor, to_uint8_rgb
from flexnas.metrics.macs import MacCounter, _Forward, count_macs, count_unet, sdpa_flop_jit
from flexnas.metrics.measures import fid as frechet
from flexnas.metrics.measures import statistics
from flexnas.plan.plan import Plan, StepKind

SCHED = "DDIMScheduler"
T = 10
N_IMAGES = 32
EXTRACTOR = "fashion-mnist-classifier"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("flexnas-cache")


@pytest.fixture(autouse=True)
def flexnas_cache(cache_root, monkeypatch):
    """Every test caches (MACs, teacher statistics) under a pytest tmp dir, never ~/.cache."""
    monkeypatch.setenv("FLEXNAS_CACHE", str(cache_root))
    return cache_root


class _one_thread:
    """torch on one thread for module-scoped fixtures (conftest's autouse fixture is per test)."""

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _load_problem(**overrides):
    from flexnas.models.registry import get_problem

    problem = get_problem("fashion-mnist", T=T, num_images=N_IMAGES, batch_size=N_IMAGES, **overrides)
    for attempt in range(5):  # training swaps the weights folder atomically; retry across the swap
        try:
            return problem.load()
        except FlexnasError:
            if attempt == 4:
                raise
            time.sleep(1.0)


@pytest.fixture(scope="module")
def loaded(cache_root):
    with pytest.MonkeyPatch.context() as mp, _one_thread():
        mp.setenv("FLEXNAS_CACHE", str(cache_root))
        return _load_problem()


@pytest.fixture(scope="module")
def evaluator(loaded, cache_root):
    with pytest.MonkeyPatch.context() as mp, _one_thread():
        mp.setenv("FLEXNAS_CACHE", str(cache_root))
        return Evaluator(loaded)


@pytest.fixture(scope="module")
def images(loaded):
    """Float images in [0, 1]: the teacher's and a 2-step (8 NULL steps) plan's, same noise."""
    with _one_thread():
        return {"teacher": loaded.images(None, n=N_IMAGES),
                "null": loaded.images(Plan.step_reduction(SCHED, T, 2), n=N_IMAGES)}


@pytest.fixture(scope="module")
def feature_extractor():
    from problems.fashion_mnist.features import NAME, FashionFeatureExtractor

    return FashionFeatureExtractor(NAME, ["features"])


def _features(extractor, images01: torch.Tensor) -> np.ndarray:
    """Features of the registered extractor on the same uint8 images torch-fidelity sees."""
    (feats,) = extractor(to_uint8_rgb(images01))
    return feats.double().numpy()


def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():  # few images: singular covariances, sqrtm still accurate here
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _real_images(n: int) -> torch.Tensor:
    from problems.fashion_mnist.data import load_split

    try:
        x, _ = load_split("test")
    except FlexnasError as e:
        pytest.skip(str(e))
    return torch.from_numpy(x[:n]).float().div(255).unsqueeze(1)


def _conv_calls(unet: torch.nn.Module) -> tuple[dict, torch.utils.hooks.RemovableHandle]:
    """Count network evaluations: conv_in runs in every FULL and PARTIAL forward (never cached)."""
    calls = {"n": 0}

    def hook(_m, _i, _o):
        calls["n"] += 1

    return calls, unet.conv_in.register_forward_hook(hook)


# ----------------------------------------------------------------------------- 1. Fréchet distance
@pytest.mark.parametrize("pair", ["teacher-vs-null", "real-vs-teacher"])
def test_fid_of_image_features_matches_scipy(pair, images, feature_extractor, tmp_path):
    if pair == "teacher-vs-null":
        a, b = images["teacher"], images["null"]
    else:
        a, b = _real_images(N_IMAGES), images["teacher"]
    assert not torch.equal(to_uint8_rgb(a), to_uint8_rgb(b))
    fa, fb = _features(feature_extractor, a), _features(feature_extractor, b)
    expected = _scipy_fid(fa, fb)
    got = frechet(statistics(fa), statistics(fb))
    assert expected > 0.1
    assert got == pytest.approx(expected, rel=1e-4)


def test_to_uint8_rgb_repeats_grayscale_and_rounds():
    x = torch.tensor([0.0, 0.5, 1.0, 1.7, -0.3]).view(5, 1, 1, 1)
    u = to_uint8_rgb(x)
    assert u.dtype == torch.uint8 and u.shape == (5, 3, 1, 1)
    assert u[:, 0].flatten().tolist() == [0, 128, 255, 255, 0]
    assert torch.equal(u[:, 0], u[:, 1]) and torch.equal(u[:, 0], u[:, 2])


def test_stored_teacher_features_are_the_teacher_images_features(evaluator, images, feature_extractor):
    """The features the store keeps for the teacher are the extractor's features of the teacher's images."""
    evaluator.ensure_teacher()
    teacher = evaluator.loaded.problem.teacher_plan()
    assert evaluator.store().has(teacher, N_IMAGES)  # on disk: a new store (a new process) finds them
    stored = evaluator.features.features(teacher, N_IMAGES)
    np.testing.assert_allclose(stored, _features(feature_extractor, images["teacher"]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 2. rFID
def test_rfid_of_teacher_is_zero(evaluator, loaded):
    assert evaluator.rfid(loaded.problem.teacher_plan()) <= 1e-6


def test_rfid_grows_with_null_steps(evaluator, loaded):
    few_null = evaluator.rfid(Plan.step_reduction(SCHED, T, 5))
    many_null = evaluator.rfid(Plan.step_reduction(SCHED, T, 2))
    deepcache = evaluator.rfid(Plan.deepcache(SCHED, T, 2, len(loaded.branches) - 1))
    assert 0 < few_null < many_null
    assert 0 < deepcache < many_null
    assert all(math.isfinite(v) for v in (few_null, many_null, deepcache))


def test_fid_to_real_matches_scipy_against_shipped_statistics(evaluator, loaded, feature_extractor):
    """FID to real images = scipy Fréchet distance of the images' features to the shipped (mu, sigma)."""
    latents = loaded.latents(Plan.step_reduction(SCHED, T, 5), n=N_IMAGES)
    fid = evaluator.fid_to_real_of_latents(latents)
    assert fid is not None and math.isfinite(fid) and fid > 0
    real = np.load(loaded.problem.real_statistics)
    assert real["extractor"].item() == EXTRACTOR
    f = _features(feature_extractor, loaded.images(Plan.step_reduction(SCHED, T, 5), n=N_IMAGES))
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = np.real(scipy.linalg.sqrtm(sigma @ real["sigma"]))
    expected = float(((mu - real["mu"]) ** 2).sum() + np.trace(sigma) + np.trace(real["sigma"]) - 2 * np.trace(covmean))
    assert fid == pytest.approx(expected, rel=1e-4)


def test_rfid_rejects_plan_for_another_schedule(evaluator):
    with pytest.raises(FlexnasError, match="T=20"):
        evaluator.rfid(Plan.step_reduction(SCHED, 2 * T, 5))
    with pytest.raises(FlexnasError, match="DPMSolverMultistepScheduler"):
        evaluator.rfid(Plan.teacher("DPMSolverMultistepScheduler", T))


# ----------------------------------------------------------------------------- 3. teacher cache
def test_teacher_cache_hit_on_second_evaluator(loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path))  # a cold cache of its own
    plan = Plan.step_reduction(SCHED, T, 5)
    first = Evaluator(loaded)
    assert first.cache_root == tmp_path / "features"
    calls, handle = _conv_calls(loaded.unet)
    try:
        r1 = first.rfid(plan)
        assert calls["n"] == T + 5  # the teacher (T FULL steps, one batch) + the candidate's 5
        second = Evaluator(loaded)  # fresh object, same settings
        assert second.identity() == first.identity()
        calls["n"] = 0
        r2 = second.rfid(plan)
        assert calls["n"] == 5  # the candidate only: the teacher's features came from the store
        calls["n"] = 0
        second.ensure_teacher()
        assert calls["n"] == 0
    finally:
        handle.remove()
    assert r2 == pytest.approx(r1, rel=1e-6, abs=1e-9)


def test_store_identity_depends_on_seed_and_schedule_not_image_count(loaded, evaluator):
    key = evaluator.identity()
    assert key.startswith("fashion-mnist-")
    assert Evaluator(loaded).identity() == key
    # more images extend fewer (batch i always draws from seed + i): the count is not part of the identity
    assert Evaluator(loaded, images=N_IMAGES // 2).identity() == key
    assert evaluator.identity(N_IMAGES) != evaluator.identity(N_IMAGES // 2)
    reseeded = copy.copy(loaded)  # same weights in memory; only the problem's seed differs
    reseeded.problem = dataclasses.replace(loaded.problem, seed=loaded.problem.seed + 1)
    assert Evaluator(reseeded).identity() != key
    longer = copy.copy(loaded)
    longer.problem = dataclasses.replace(loaded.problem, T=2 * T)
    assert Evaluator(longer).identity() != key


# ----------------------------------------------------------------------------- 4. MACs
def _fc_flops(fn) -> tuple[int, dict[str, int]]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops(), {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}


def _math_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)  # attention as bmm, which FlopCounterMode counts


@pytest.fixture(scope="module")
def fwd_inputs(loaded):
    torch.manual_seed(0)
    return _Forward(loaded.unet, {}), (torch.randn(1, *loaded.sample_shape), torch.tensor(500))


def _quiet_count(module, inputs, extra_handles: bool = True):
    from fvcore.nn import FlopCountAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if extra_handles:
            a = count_macs(module, inputs)
        else:
            a = FlopCountAnalysis(module, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return a.by_operator(), int(a.total())


def test_fvcore_conv_linear_equals_flop_counter_mode(fwd_inputs):
    fwd, inputs = fwd_inputs
    ops, _ = _quiet_count(fwd, inputs)
    fv = sum(ops.get(k, 0) for k in ("conv", "linear", "addmm", "matmul", "mm", "bmm"))
    total, by_op = _fc_flops(lambda: fwd(*inputs))  # CPU sdpa kernel: not counted by FlopCounterMode
    dense = sum(v for k, v in by_op.items() if k in ("aten.convolution", "aten.addmm", "aten.mm"))
    assert fv > 0 and dense > 0
    assert fv * 2 == dense
    # with attention decomposed to bmm, FlopCounterMode's total / 2 is fvcore's conv + linear + attention
    with _math_sdpa():
        total_math, _ = _fc_flops(lambda: fwd(*inputs))
    assert total_math == 2 * (fv + ops["scaled_dot_product_attention"])


def test_attention_handle_counts_sdpa(fwd_inputs, loaded):
    fwd, inputs = fwd_inputs
    with_ops, with_total = _quiet_count(fwd, inputs, extra_handles=True)
    without_ops, without_total = _quiet_count(fwd, inputs, extra_handles=False)
    assert "scaled_dot_product_attention" not in without_ops
    sdpa = with_ops["scaled_dot_product_attention"]
    assert sdpa > 0
    assert with_total - without_total == sdpa
    # hand count: 4 attention layers at 7x7 (down, mid, 2 up), 128 channels in heads of 32
    cfg = loaded.unet.config
    heads, head_dim, L = cfg.block_out_channels[-1] // cfg.attention_head_dim, cfg.attention_head_dim, 7 * 7
    n_attn = cfg.layers_per_block + 1 + (cfg.layers_per_block + 1)  # down + mid + up block
    assert sdpa == n_attn * heads * L * L * 2 * head_dim


def test_sdpa_handle_formula():
    class FakeValue:  # what fvcore passes: JIT values with a complete tensor type
        def __init__(self, shape):
            self.shape = list(shape)

        def isCompleteTensor(self):  # noqa: N802 - torch._C.Value's method name
            return True

        def type(self):
            return self

        def sizes(self):
            return self.shape

    q, k, v = FakeValue((2, 4, 49, 32)), FakeValue((2, 4, 30, 32)), FakeValue((2, 4, 30, 16))
    assert sdpa_flop_jit([q, k, v], []) == 2 * 4 * 49 * 30 * (32 + 16)


def test_partial_macs_monotonic_and_match_flop_counter(loaded, fwd_inputs):
    full, partial = count_unet(loaded.unet, loaded.sample_shape)
    branches = sorted(partial)
    assert branches == list(range(len(loaded.branches)))
    values = [partial[b] for b in branches]
    assert all(0 < a < b for a, b in zip(values, values[1:]))
    assert values[-1] < full
    counter = MacCounter.for_problem(loaded)  # the on-disk cached count is the same count
    assert (counter.full, counter.partial, counter.cfg_factor) == (full, partial, 1)

    # PARTIAL forwards counted by fvcore (conv + linear + attention) match FlopCounterMode on the real forward
    fwd, inputs = fwd_inputs
    with PartialUNet.use(loaded.unet) as pu:
        for b in (0, branches[-1]):
            pu.full()
            with torch.no_grad():
                fwd(*inputs)
            pu.partial(b)
            ops, total = _quiet_count(fwd, inputs)
            assert total == partial[b]
            with _math_sdpa():
                fc_total, _ = _fc_flops(lambda: fwd(*inputs))
            assert fc_total == 2 * (ops["conv"] + ops.get("linear", 0) + ops.get("scaled_dot_product_attention", 0))


def test_plan_macs_is_the_sum_over_steps(evaluator, loaded):
    mc = evaluator.macs
    nb = len(loaded.branches)
    plans = [Plan.teacher(SCHED, T), Plan.step_reduction(SCHED, T, 2), Plan.deepcache(SCHED, T, 5, 1),
             Plan(SCHED, T, ((5, nb - 1), (3, 0))), Plan(SCHED, T, ((1,), (2, 2), (2, 0), (1,), (2, 1)))]
    for plan in plans:
        hand = 0
        for step in plan.steps:
            if step.kind is StepKind.FULL:
                hand += mc.full
            elif step.kind is StepKind.PARTIAL:
                hand += mc.partial[step.branch]
        assert mc.plan_macs(plan) == hand
        assert mc.ratio(plan) == pytest.approx(hand / (T * mc.full))
    assert mc.plan_macs(plans[0]) == mc.teacher_macs(T) == T * mc.full
    assert mc.ratio(plans[0]) == 1.0


def test_cfg_doubles_macs(evaluator):
    one = evaluator.macs
    two = MacCounter(one.full, dict(one.partial), cfg_factor=2)
    plan = Plan.deepcache(SCHED, T, 5, 2)
    assert two.plan_macs(plan) == 2 * one.plan_macs(plan)
    assert two.step_macs(StepKind.FULL) == 2 * one.full
    assert two.step_macs(StepKind.PARTIAL, 2) == 2 * one.partial[2]
    assert two.step_macs(StepKind.NULL) == 0
    assert two.teacher_macs(T) == 2 * one.teacher_macs(T)
    assert two.ratio(plan) == pytest.approx(one.ratio(plan))


def test_for_problem_with_guidance_counts_one_half_and_doubles(tmp_path, monkeypatch):
    """A guided text model: MACs counted for one conditional image, cfg_factor 2 = the doubled batch."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from flexnas.engine.sampler import Conditioning

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()
    emb = torch.randn(1, 7, 32)
    cond = Conditioning(prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), guidance_scale=5.0)
    fake = SimpleNamespace(unet=unet, sample_shape=(4, 8, 8), identity="tiny-cond",
                           conditioning=lambda start, stop: cond)
    mc = MacCounter.for_problem(fake)
    assert mc.cfg_factor == 2
    full, partial = count_unet(unet, (4, 8, 8), {"encoder_hidden_states": emb})
    assert (mc.full, mc.partial) == (full, partial)
    # the guided step runs a batch of 2: its count (conv + linear, via FlopCounterMode) is twice one image's
    x1, t = torch.randn(1, 4, 8, 8), torch.tensor(10)
    with _math_sdpa():
        one, _ = _fc_flops(lambda: unet(x1, t, encoder_hidden_states=emb))
        two, _ = _fc_flops(lambda: unet(torch.cat([x1, x1]), t, encoder_hidden_states=torch.cat([emb * 0, emb])))
    assert two == 2 * one
    assert mc.step_macs(StepKind.FULL) == 2 * full


# ----------------------------------------------------------------------------- 5. bad input
def test_unknown_extractor_is_named(loaded):
    with pytest.raises(FlexnasError, match="no-such-extractor"):
        resolve_extractor("no-such-extractor")
    with pytest.raises(FlexnasError, match="no-such-extractor"):
        Evaluator(loaded, extractor="no-such-extractor")


def test_missing_inception_weights(loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(FlexnasError, match=INCEPTION_FILE):
        inception_weights()
    with pytest.raises(FlexnasError, match=INCEPTION_FILE):
        Evaluator(loaded, extractor=INCEPTION)  # before any sampling
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(FlexnasError, match="inception.pth") as e:
        resolve_extractor(INCEPTION, missing)
    assert INCEPTION_FILE in str(e.value)
    present = tmp_path / INCEPTION_FILE
    present.write_bytes(b"not really weights")
    assert resolve_extractor(INCEPTION, present)["feature_extractor_weights_path"] == str(present)


@pytest.mark.parametrize("n", [0, 1, -3])
def test_too_few_images(loaded, n):
    with pytest.raises(FlexnasError, match="images"):
        Evaluator(loaded, images=n)


def test_zero_images_to_sample(loaded):
    with pytest.raises(FlexnasError, match="at least 1"):
        loaded.latents(None, n=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_latents_give_inf_with_warning(evaluator, loaded, bad):
    evaluator.ensure_teacher()
    latents = torch.zeros(N_IMAGES, *loaded.sample_shape)
    latents[3, 0, 5, 5] = bad
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert evaluator.rfid_of_latents(latents) == math.inf
    assert evaluator.fid_to_real_of_latents(latents) == math.inf


def test_diverging_sampler_scores_inf_not_crash(evaluator, loaded):
    """A denoiser that outputs NaN: evaluate() reports inf rFID/FID and finite MACs."""
    evaluator.ensure_teacher()

    def nan_output(_m, _i, out):
        return (torch.full_like(out[0], math.nan),) + tuple(out[1:])

    handle = loaded.unet.register_forward_hook(nan_output)
    try:
        with pytest.warns(RuntimeWarning):
            res = evaluator.evaluate(Plan.step_reduction(SCHED, T, 2))
    finally:
        handle.remove()
    assert res["rfid"] == math.inf and res["fid_to_real"] == math.inf
    assert res["macs"] == 2 * evaluator.macs.full and res["macs_ratio"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- 6. CLI
@pytest.fixture(scope="module")
def cli_plan(tmp_path_factory):
    from flexnas.cli import main

    path = tmp_path_factory.mktemp("cli") / "steps10.json"
    assert main(["--threads", "1", "plan", "--problem", "fashion-mnist", "--steps", "10", "--out", str(path)]) == 0
    return path


def test_cli_evaluate_json(cli_plan, capsys):
    from flexnas.cli import main

    plan = Plan.load(cli_plan)
    assert plan.T == 100 and plan.counts() == {"full": 10, "partial": {}, "null": 90}
    capsys.readouterr()
    rc = main(["--threads", "1", "evaluate", "--problem", "fashion-mnist", "--plan", str(cli_plan),
               "--images", "16", "--wall-images", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert isinstance(res, dict)
    assert {"rfid", "fid_to_real", "macs", "macs_ratio", "wall_s", "wall_ratio"} <= set(res)
    assert math.isfinite(res["rfid"]) and res["rfid"] > 0
    assert math.isfinite(res["fid_to_real"]) and res["fid_to_real"] > 0
    assert isinstance(res["macs"], int) and res["macs"] > 0
    assert res["macs_ratio"] == pytest.approx(0.1)
    assert res["wall_s"] > 0 and res["wall_ratio"] > 0
    assert res["teacher_wall_s"] > res["wall_s"] and res["wall_ratio"] < 1  # 10 network calls against 100


def test_wall_ratios_interleave_rounds_so_a_drift_moves_every_ratio_alike(evaluator, loaded, monkeypatch):
    """A fake clock: the teacher takes 10 units, plan A 2, plan B 5, times a slow-down that grows with
    every call (a machine getting busier). The reported numbers are recomputed from the call log:
    a warm-up of the plans, then the teacher timed before and after each round's plans (adjacent rounds
    share one timing), its mean the round's teacher time, medians over the rounds; the drift leaves
    the ratios near 2/10 and 5/10."""
    import flexnas.metrics.evaluator as ev_mod

    a, b = Plan.teacher(loaded.problem.scheduler, 20), Plan.teacher(loaded.problem.scheduler, 50)
    cost = {None: 10.0, a.strip(): 2.0, b.strip(): 5.0}
    clock, calls, log = [0.0], [0], []

    def latents(plan, n):
        calls[0] += 1
        log.append(None if plan is None else plan.strip())
        clock[0] += cost[log[-1]] * (1 + 0.1 * calls[0])

    monkeypatch.setattr(evaluator.loaded, "latents", latents)
    monkeypatch.setattr(ev_mod.time, "perf_counter", lambda: clock[0])
    out = evaluator.wall_ratios([a, b], images=4, rounds=3, seed=0)
    assert calls[0] == 2 + 1 + 3 * 3 and None not in log[:2] and log[2::3] == [None] * 4  # teacher brackets each round
    ratios = {a.strip(): [], b.strip(): []}
    times, teacher = {a.strip(): [], b.strip(): []}, []
    factor = [1 + 0.1 * (j + 1) for j in range(len(log))]  # the slow-down of call j
    for rnd in range(3):  # independent recomputation from the call log
        k = 2 + 3 * rnd  # the teacher before the round; after it: k + 3
        tw = (10 * factor[k] + 10 * factor[k + 3]) / 2
        teacher.append(tw)
        for j in (k + 1, k + 2):
            t = cost[log[j]] * factor[j]
            times[log[j]].append(t)
            ratios[log[j]].append(t / tw)
    for plan, r in zip((a, b), out):
        assert r["wall_ratio"] == pytest.approx(float(np.median(ratios[plan.strip()])))
        assert r["wall_s"] == pytest.approx(float(np.median(times[plan.strip()])))
        assert r["teacher_wall_s"] == pytest.approx(float(np.median(teacher)))
    assert 0.15 < out[0]["wall_ratio"] < 0.25 and 0.4 < out[1]["wall_ratio"] < 0.6


@pytest.mark.parametrize("content", ["{not json", '{"format": "something-else"}', "[1, 2]",
                                     '{"format": "flexnas-plan", "version": 1, "scheduler": "DDIMScheduler", '
                                     '"T": 100, "segments": [{"interval": 3}]}', ""])
def test_cli_evaluate_malformed_plan(tmp_path, capsys, content):
    from flexnas.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(content)
    rc = main(["--threads", "1", "evaluate", "--problem", "fashion-mnist", "--plan", str(bad),
               "--images", "16", "--wall-images", "0", "--json"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flexnas: error:")
    assert "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--images", "0"], "--images"),
    (["--wall-images", "-1"], "--wall-images"),
    (["--extractor", "no-such-extractor"], "no-such-extractor"),
    (["--extractor", INCEPTION, "--inception-weights", "/nonexistent/inception.pth"], INCEPTION_FILE),
])
def test_cli_evaluate_bad_options(cli_plan, capsys, args, needle):
    from flexnas.cli import main

    rc = main(["--threads", "1", "evaluate", "--problem", "fashion-mnist", "--plan", str(cli_plan), "--json", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_cli_evaluate_missing_plan_file(tmp_path, capsys):
    from flexnas.cli import main

    rc = main(["--threads", "1", "evaluate", "--problem", "fashion-mnist", "--plan", str(tmp_path / "nope.json")])
    _, err = capsys.readouterr()
    assert rc == 2 and "nope.json" in err and len(err.strip().splitlines()) == 1


def test_truncated_macs_cache_is_a_miss(tmp_path, monkeypatch):
    """A MACs cache file cut short (a killed run) is recounted, not a traceback."""
    from flexnas.metrics.macs import MacCounter, cache_dir

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path))
    from flexnas.models.registry import get_problem

    loaded = get_problem("fashion-mnist", T=10, num_images=4, batch_size=4).load()
    first = MacCounter.for_problem(loaded)
    (path,) = (cache_dir() / "macs").glob("*.json")
    path.write_text(path.read_text()[:10])
    again = MacCounter.for_problem(loaded)
    assert (again.full, again.partial) == (first.full, first.partial)
    assert json.loads(path.read_text())["full"] == first.full
