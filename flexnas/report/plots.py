"""Images and figures written by the CLI and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images in [0, 1] (``[N, C, H, W]``) as one PNG grid."""
    from torchvision.utils import save_image

    n = len(images)
    nrow = nrow or max(1, int(round(n ** 0.5)))
    save_image(images.float().cpu(), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return Path(path)


def plan_family(plan: dict) -> str | None:
    """Which baseline family a plan dict belongs to: teacher (every step FULL), steps (FULL and NULL
    steps only, evenly spaced to within one base step: plain step reduction), deepcache (every segment
    ``(L, b)`` at one branch), or None (searched)."""
    segs, T, N = plan["segments"], plan["T"], plan["N"]
    ks = {s["interval"] for s in segs}
    bs = {s["branch"] for s in segs}
    if ks == {1} and N == T:
        return "teacher"
    if ks <= {0, 1}:
        L = T // N
        full = [i * L for i, s in enumerate(segs) if s["interval"] == 1]
        gaps = {b - a for a, b in zip(full, full[1:])}
        return "steps" if not gaps or max(gaps) - min(gaps) <= 1 else None
    if ks == {L := T // N} and len(bs) == 1:
        return "deepcache"
    return None


MARKERS = {"teacher": ("*", "black", "teacher"), "deepcache": ("^", "tab:blue", "DeepCache uniform"),
           "steps": ("s", "tab:green", "step reduction")}


def plot_pareto(records: list[dict], front: list[dict], path: str | Path, objective: str = "rfid",
                title: str = "", baselines: list[dict] | None = None, rescored: list[dict] | None = None,
                rescored_measure: str | None = None) -> Path:
    """Objective vs MACs ratio: every candidate, the front, and baseline plans marked; with
    ``rescored`` records, a second panel shows the re-scored plans on ``rescored_measure``."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def pts_of(rs, m):
        ok = sorted((r for r in rs if r.get(m) is not None and math.isfinite(r[m])), key=lambda r: r["macs_ratio"])
        return [r["macs_ratio"] for r in ok], [r[m] for r in ok]

    def pts(rs):
        return pts_of(rs, objective)

    fig, axes = plt.subplots(1, 2 if rescored else 1, figsize=(12 if rescored else 6.4, 4.6), dpi=120, squeeze=False)
    ax = axes[0, 0]
    ax.scatter(*pts(records), s=12, c="lightgray", label="evaluated candidates")
    for fam, (m, c, label) in MARKERS.items():
        xs, ys = pts([r for r in records + (baselines or []) if plan_family(r["plan"]) == fam])
        if xs:
            ax.scatter(xs, ys, marker=m, s=50, c=c, label=label, zorder=3)
    fx, fy = pts(sorted(front, key=lambda r: r["macs_ratio"]))
    ax.plot(fx, fy, "o-", c="tab:red", ms=5, label="front", zorder=4)
    ax.set_xlabel("MACs ratio to teacher (lower = faster)")
    ax.set_ylabel(objective.replace("_", " "))
    ax.set_yscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    if rescored:
        ax2, m = axes[0, 1], rescored_measure
        for fam, (mk, c, label) in MARKERS.items():
            xs, ys = pts_of([r for r in rescored if plan_family(r["plan"]) == fam], m)
            ax2.scatter(xs, ys, marker=mk, s=50, c=c, label=label, zorder=3)
        xs, ys = pts_of([r for r in rescored if not plan_family(r["plan"])], m)
        ax2.scatter(xs, ys, s=30, c="tab:orange", label="searched", zorder=3)
        xs, ys = pts_of([r for r in rescored if r.get("hi_front")], m)
        ax2.plot(xs, ys, "o-", c="tab:red", ms=4, mfc="none", label="re-scored front", zorder=4)
        ax2.set_xlabel("MACs ratio to teacher (lower = faster)")
        ax2.set_ylabel(f"{m.replace('_', ' ')} ({rescored[0]['hi_images']} images)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title("re-scored on more images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def side_by_side(left: torch.Tensor, right: torch.Tensor, path: str | Path, titles: tuple[str, str]) -> Path:
    """Two image grids in one PNG (e.g. teacher | plan) with titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=120)
    for ax, imgs, t in zip(axes, (left, right), titles):
        n = max(1, int(round(len(imgs) ** 0.5)))
        g = make_grid(imgs.float().cpu(), nrow=n, padding=2, pad_value=1.0)
        ax.imshow(g.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
