"""The embedded default: model and classifier load offline, training checkpoints and resumes."""

from __future__ import annotations

import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch

from flexnas.errors import FlexnasError
from problems.fashion_mnist import load_classifier, load_pipeline
from problems.fashion_mnist.data import load_split
from problems.fashion_mnist.model import PIPELINE_DIR, UNET_CONFIG


def test_embedded_model_loads_offline_and_runs():
    pipe = load_pipeline()
    unet = pipe.unet.eval()
    assert type(pipe).__name__ == "DDPMPipeline"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    assert tuple(unet.config.block_out_channels) == UNET_CONFIG["block_out_channels"]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = unet(x, torch.tensor(500)).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    # trained weights, not the initialisation: the noise prediction correlates with the true noise
    noise, x0 = torch.randn(4, 1, 28, 28), torch.zeros(4, 1, 28, 28) - 1
    t = torch.tensor([300] * 4)
    with torch.no_grad():
        pred = unet(pipe.scheduler.add_noise(x0, noise, t), t).sample
    assert torch.nn.functional.cosine_similarity(pred.flatten(), noise.flatten(), dim=0) > 0.9


def test_the_teacher_features_shipped_are_found_and_are_the_teachers(tmp_path):
    """README command 1 reads its teacher's 32 and 256 images from ``weights/store`` (rebuild it with
    ``python -m problems.fashion_mnist.teacher_store`` when this fails: the identity changed), and
    they are the features of the teacher's images from the same noise, sampled here afresh."""
    from flexnas.metrics.evaluator import Evaluator
    from problems.fashion_mnist import FEATURE_EXTRACTOR, make_problem

    ev = Evaluator(make_problem(), images=64, extractor=FEATURE_EXTRACTOR, cache_root=tmp_path)
    teacher = ev.loaded.problem.teacher_plan()
    assert ev.features.has(teacher, 32) and ev.features.has(teacher, 256) and not any(tmp_path.iterdir())
    fresh = ev.features.embed(ev.loaded.latents(teacher, n=4))  # the first 4 images, sampled in a batch of 4
    np.testing.assert_allclose(fresh, ev.features.features(teacher, 64)[:4], rtol=1e-3, atol=1e-3)


def test_classifier_loads_and_runs():
    clf = load_classifier()
    with torch.no_grad():
        logits = clf(torch.zeros(3, 1, 28, 28))
        feats = clf.features(torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 10) and feats.shape == (3, clf.config.feature_dim)


def test_classifier_accuracy_on_test_images():
    from problems.fashion_mnist.train_classifier import accuracy

    images, labels = load_split("test")
    acc = accuracy(load_classifier(), images[:1000], labels[:1000])
    assert acc >= 0.90, f"classifier accuracy {acc:.3f} < 0.90"


def test_training_writes_checkpoint_and_resumes(tmp_path, capsys):
    from problems.fashion_mnist import train_ddpm

    ckpt, export = tmp_path / "ck.pt", tmp_path / "pipe"
    args = ["--limit", "128", "--batch", "8", "--checkpoint", str(ckpt), "--export", str(export), "--threads", "1"]
    assert train_ddpm.main(["--max-steps", "2", *args]) == 0
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 2 and {"unet", "ema", "opt", "rng"} <= set(state)
    first = load_pipeline(export)
    assert train_ddpm.main(["--max-steps", "4", *args]) == 0
    assert "resumed from" in capsys.readouterr().out
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 4
    second = load_pipeline(export)
    w1, w2 = first.unet.conv_in.weight, second.unet.conv_in.weight
    assert not torch.equal(w1, w2)  # the EMA moved on after resuming


def test_training_missing_dataset_is_one_line(tmp_path, capsys):
    from problems.fashion_mnist import train_ddpm

    rc = train_ddpm.main(["--max-steps", "1", "--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "c.pt").exists()


def test_training_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    from problems.fashion_mnist import train_ddpm

    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not a checkpoint")
    rc = train_ddpm.main(["--max-steps", "1", "--limit", "16", "--checkpoint", str(ckpt), "--export", ""])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(ckpt) in err
    assert ckpt.read_bytes() == b"not a checkpoint"  # nothing overwritten


def test_missing_weights_folder_names_it(tmp_path):
    with pytest.raises(FlexnasError, match=str(tmp_path / "nowhere")):
        load_pipeline(tmp_path / "nowhere")


def test_corrupt_weights_folder_names_it(tmp_path):
    bad = tmp_path / "ddpm"
    shutil.copytree(PIPELINE_DIR, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FlexnasError, match="corrupt") as e:
        load_pipeline(bad)
    assert str(bad) in str(e.value)


def test_cli_missing_weights_is_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    from flexnas.cli import main

    (tmp_path / "badproblem.py").write_text(textwrap.dedent(f"""
        from problems.fashion_mnist import make_problem as base, load_pipeline
        def make_problem(**kw):
            return base(load_pipeline=lambda: load_pipeline({str(tmp_path / 'missing')!r}), **kw)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("badproblem", None)
    out = tmp_path / "grid.png"
    rc = main(["sample", "--problem", "badproblem:make_problem", "--images", "2", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "missing") in err and "Traceback" not in err
    assert not out.exists()


def test_missing_dataset_split_message(tmp_path):
    with pytest.raises(FlexnasError, match="apt-get install dataset-fashion-mnist"):
        load_split("train", tmp_path)
    with pytest.raises(FlexnasError, match="unknown Fashion-MNIST split"):
        load_split("validation")


@pytest.mark.parametrize("k", [10, 20])
def test_skipping_the_first_segment_reproduces_stock_step_reduction(k):
    """In drop mode a plan may skip leading segments: FULL steps at base steps L-1, 2L-1, .., T-1
    of DDIM 100 are exactly DDIMPipeline(num_inference_steps=k) ("leading" spacing starts below
    the top of the schedule), which a plan whose first step is FULL cannot be."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from flexnas import get_problem
    from flexnas.plan.plan import Plan, Segment

    loaded = get_problem("fashion-mnist", num_images=4, batch_size=4).load()
    L = 100 // k
    plan = Plan("DDIMScheduler", 100, tuple(Segment(1) if i % L == L - 1 else Segment(0) for i in range(100)))
    assert plan.counts()["full"] == k and plan.steps[0].kind.value == "null"
    ours = loaded.images(plan)
    pipe = DDIMPipeline(unet=loaded.unet, scheduler=DDIMScheduler.from_config(loaded.pipeline.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(batch_size=4, generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=k, eta=0.0,
                 output_type="np").images
    assert torch.equal(ours, torch.from_numpy(stock).permute(0, 3, 1, 2))
    # the same k FULL steps starting at the top of the schedule are other images
    top = Plan.step_reduction("DDIMScheduler", 100, k)
    assert not torch.equal(loaded.images(top), ours)
    with pytest.raises(FlexnasError, match="reuse"):
        Plan("DDIMScheduler", 100, plan.segments, "reuse")
