"""Compiled step kinds: ``torch.compile`` of the stock U-Net forward through the partial-step hooks."""

from __future__ import annotations

from typing import Callable

import torch


def compile_by_default(device: torch.device) -> bool:
    """Whether step kinds are compiled when the problem does not say (benchmarks/REPORT.md, throughput)."""
    return device.type == "cuda"


def compiled_forward(unet: torch.nn.Module, num_branches: int) -> Callable:
    """``torch.compile`` of the U-Net's stock forward, traced through its kept partial-step hooks.

    Dynamo guards on the hooks' mode and branch, so each step kind (FULL, PARTIAL at each
    branch) gets its own static graph, as the DeepCache maintainers advise, and the graphs
    live as long as the loaded problem. The recompile limit is raised to hold every kind at
    two batch shapes (the problem's batch and a last, shorter one).
    """
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 4 * (num_branches + 1))
    return torch.compile(unet.forward)

