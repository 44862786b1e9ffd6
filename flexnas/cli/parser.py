"""The argument parser of every command."""

from __future__ import annotations

import argparse

from flexnas.metrics.measures import GOALS, MEASURES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexnas", description="Search fast sampling plans for diffusion models.")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, cores))")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        return sp

    def problem_arg(sp: argparse.ArgumentParser, steps_flag: bool = True) -> None:
        """--problem and/or --model (one of them is required, checked in _problem_spec) and the model options."""
        sp.add_argument("--problem", default=None,
                        help="registered problem name (fashion-mnist, ddpm-cifar10, ldm-celebahq, sd15, sdxl, "
                             "sd15-controlnet) or module:function")
        g = sp.add_argument_group("model options (any diffusers pipeline whose denoiser is a U-Net)")
        g.add_argument("--model", default=None, metavar="PATH_OR_ID",
                       help="diffusers pipeline folder or hub id; alone: defaults from its pipeline class; with "
                            "--problem: that problem's settings on these weights")
        g.add_argument("--scheduler", default=None, help="diffusers scheduler class of the base schedule "
                       "(e.g. DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler)")
        g.add_argument(*(("--steps", "--base-steps") if steps_flag else ("--base-steps",)), dest="base_steps",
                       type=int, default=None, metavar="T", help="steps T of the base schedule")
        g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (text-to-image)")
        g.add_argument("--prompts", default=None, metavar="FILE",
                       help="prompt file: text (one per line) or JSON (text-to-image)")
        g.add_argument("--input-images", default=None, metavar="FOLDER",
                       help="init images of an image-to-image pipeline (image i: the i-th file mod their number)")
        g.add_argument("--strength", type=float, default=None,
                       help="image-to-image strength in (0, 1]: the share of the base schedule that runs (default 0.8; "
                            "inpainting 1.0)")
        g.add_argument("--mask-images", default=None, metavar="FOLDER",
                       help="masks of an inpainting pipeline, white where it repaints (mask i: the i-th file mod their "
                            "number)")
        g.add_argument("--control-images", default=None, metavar="FOLDER",
                       help="conditioning images of a ControlNet pipeline")
        g.add_argument("--controlnet", default=None, metavar="PATH_OR_ID",
                       help="ControlNetModel folder or hub id added to a Stable Diffusion (XL) --model")
        g.add_argument("--resolution", type=int, default=None, metavar="PIXELS", help="image side in pixels")
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the problem's)")
        g.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                       help="model precision (fp16 needs a GPU; default: as loaded)")
        g.add_argument("--batch-size", type=int, default=None, help="images per sampler batch")
        g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile each step kind (default: on for CUDA, off on CPU, as measured in "
                            "benchmarks/REPORT.md)")
        g.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=None,
                       help="batch a search generation's candidates into shared U-Net calls (default: on for CUDA, "
                            "off on CPU, as measured in benchmarks/REPORT.md)")

    sp = add("plan", "write a common plan as JSON (stdout, or --out)")
    problem_arg(sp, steps_flag=False)  # --steps here is the plain step-reduction plan
    sp.add_argument("--teacher", action="store_true", help="every step FULL")
    sp.add_argument("--deepcache", type=int, metavar="INTERVAL", help="DeepCache uniform: FULL every INTERVAL steps")
    sp.add_argument("--steps", type=int, metavar="T2", help="plain step reduction to T2 steps")
    sp.add_argument("--segments", type=int, metavar="N", help="N uniform segments (with --interval, --branch)")
    sp.add_argument("--branch", type=int, metavar="B")
    sp.add_argument("--interval", type=int, metavar="K")
    sp.add_argument("--null-mode", choices=("drop", "reuse"), default=None)
    sp.add_argument("--out", default=None, help="write to this file instead of stdout (never overwrites)")

    sp = add("show", "print a plan's step strip, counts and MACs ratio")
    sp.add_argument("plan")
    problem_arg(sp)

    sp = add("branches", "list a problem's skip branches")
    problem_arg(sp)

    sp = add("sample", "save a sample grid for a plan")
    problem_arg(sp)
    sp.add_argument("--plan", default=None, help="plan JSON (default: the teacher)")
    sp.add_argument("--images", type=int, default=64)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)
    sp = add("evaluate", "score a plan: rfid, fid_to_real, macs, macs_ratio, wall_s, wall_ratio")
    problem_arg(sp)
    sp.add_argument("--plan", required=True)
    sp.add_argument("--images", type=int, default=None, help="images for rFID (default: the problem's)")
    sp.add_argument("--wall-images", type=int, default=16, help="images per wall-clock measurement (0: skip)")
    sp.add_argument("--extractor", default=None, help="torch-fidelity feature extractor (default: the problem's)")
    sp.add_argument("--inception-weights", default=None, help="local Inception-v3 weights file")
    sp.add_argument("--clip", default=None, metavar="FOLDER",
                    help="local transformers CLIPModel folder: adds clip_score (text-to-image problems)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp = add("space", "print the search space and its size")
    problem_arg(sp)
    sp.add_argument("--segments", default=None, help="admissible N, comma-separated (default: divisors of T)")
    sp.add_argument("--branches", default=None, help="candidate branches, comma-separated (default: all)")

    sp = add("search", "search plans with GA or NSGA-II")
    problem_arg(sp)
    sp.add_argument("--algorithm", choices=("nsga2", "ga"), default="nsga2")
    sp.add_argument("--pop", type=int, default=16)
    sp.add_argument("--gens", type=int, default=6)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--macs-budget", type=float, default=None,
                    help="MACs ratio bound (e.g. 0.3): GA needs one; NSGA-II keeps its front below it")
    sp.add_argument("--macs-floor", type=float, default=None,
                    help="MACs ratio the plans must keep (e.g. 0.05: no plan more than 20x faster, the fastest you "
                         "would use): the population spends no places on plans too fast to matter")
    sp.add_argument("--images", type=int, default=None, help="images per screening evaluation (default: the problem's)")
    sp.add_argument("--goal", choices=GOALS, default=None,
                    help="fidelity (default): the teacher's images, faster; quality: best FID to real images per "
                         "compute")
    sp.add_argument("--objective", choices=tuple(MEASURES), default=None,
                    help="search measure (default: the goal's, see README 'Objectives')")
    sp.add_argument("--rescore-images", type=int, default=None,
                    help="re-score the front and the baselines on this many images (default: the problem's, "
                         "for fashion-mnist 256 for the fidelity goal, 1000 for quality; 0: off)")
    sp.add_argument("--promote-every", type=int, default=0, metavar="K",
                    help="every K generations, score the population's non-dominated plans on --promote-images and "
                         "let them compete with that score (default 0: off; see README 'Search options')")
    sp.add_argument("--promote-images", type=int, default=None, help="images a promotion scores on (default: 4x --images)")
    sp.add_argument("--refine-evals", type=int, default=0, metavar="E",
                    help="after the last generation, spend up to E evaluations moving the FULL steps of the front's "
                         "FULL-step plans along the schedule (same speed, closer objective; default 0: off; see "
                         "README 'Search options')")
    sp.add_argument("--paper-space", action="store_true",
                    help="the paper's space: every segment runs a FULL step (no skipped segments)")
    sp.add_argument("--segments", default=None, help="admissible N, comma-separated (default: divisors of T)")
    sp.add_argument("--branches", default=None, help="candidate branches, comma-separated (default: all)")
    sp.add_argument("--null-mode", choices=("drop", "reuse"), default=None)
    sp.add_argument("--extractor", default=None)
    sp.add_argument("--inception-weights", default=None)
    sp.add_argument("--out", default=None, help="run folder (default: runs/PROBLEM-ALGO-TIME); never overwritten")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    sp.add_argument("--workers", type=int, default=None, help="evaluate on a local Dask cluster of K workers")
    sp.add_argument("--dask", default=None, metavar="ADDRESS", help="evaluate on an existing Dask scheduler")
    sp.add_argument("--choose", type=int, default=5, help="plans to pick from the front")
    sp.add_argument("--wall-images", type=int, default=16, help="images per wall-clock measurement (0: skip)")
    sp.add_argument("--grid-images", type=int, default=16)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("plot", "redraw a run's Pareto plot")
    sp.add_argument("run")
    sp.add_argument("--out", default=None)
    return p
