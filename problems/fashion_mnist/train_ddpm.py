"""Train the embedded Fashion-MNIST DDPM on a CPU, with checkpoints and resume.

    python -m problems.fashion_mnist.train_ddpm --minutes 120

Every ``--checkpoint-minutes`` the full training state (model, EMA, optimiser, step,
RNG) is written atomically to ``--checkpoint``; a later run resumes from it. The EMA
weights are exported as a ``DDPMPipeline`` folder (``save_pretrained``) at every
checkpoint, so the committed model is always the latest one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline
from diffusers.training_utils import EMAModel

from flexnas.errors import FlexnasError, report_errors
from problems.fashion_mnist.data import load_split
from problems.fashion_mnist.model import CHECKPOINT, PIPELINE_DIR, make_scheduler, make_unet


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_pipeline(unet, ema: EMAModel, out_dir: Path) -> None:
    """Write the EMA weights as a DDPMPipeline folder loadable with one from_pretrained."""
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    DDPMPipeline(unet=unet, scheduler=make_scheduler()).save_pretrained(tmp)
    ema.restore(unet.parameters())
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        import shutil
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    images, _ = load_split("train", args.data_dir)
    if args.limit:
        images = images[: args.limit]
    data = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)  # [-1, 1]

    unet, scheduler = make_unet(), make_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=0.75)
    step, gen = 0, torch.Generator().manual_seed(args.seed)
    ckpt = Path(args.checkpoint)
    if ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            unet.load_state_dict(state["unet"])
            opt.load_state_dict(state["opt"])
            ema.load_state_dict(state["ema"])
            step = state["step"]
            gen.set_state(state["rng"])
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
            raise FlexnasError(f"checkpoint {ckpt} is corrupt ({type(e).__name__}): move it away to start afresh") from None
        print(f"resumed from {ckpt} at step {step}", flush=True)

    def save() -> None:
        _save_atomic({"unet": unet.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                      "step": step, "rng": gen.get_state()}, ckpt)
        if args.export:
            export_pipeline(unet, ema, Path(args.export))
        print(f"step {step}: checkpoint written", flush=True)

    unet.train()
    start = last_ckpt = time.time()
    losses: list[float] = []
    while step < args.max_steps and (time.time() - start) < args.minutes * 60:
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} {time.time() - start:.0f}s", flush=True)
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            save()
            last_ckpt = time.time()
    save()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=120.0, help="wall-clock budget of this run")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.9995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (tests)")
    p.add_argument("--checkpoint", default=str(CHECKPOINT))
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--export", default=str(PIPELINE_DIR),
                   help="DDPMPipeline folder for the EMA weights ('' to skip)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    for name in ("minutes", "batch", "lr", "threads", "max_steps"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    return report_errors(train, args, prog="train_ddpm")


if __name__ == "__main__":
    sys.exit(main())
