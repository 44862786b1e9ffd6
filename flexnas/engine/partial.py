"""Partial U-Net steps (DeepCache) by hooking the stock diffusers model.

A U-Net's down path produces skip features in order (``conv_in``, then every down
resnet and downsampler); its up path consumes them in reverse. A *branch* ``b`` is the
index of one skip. A PARTIAL step at ``b`` runs the producers of skips ``0..b`` and
their consumers; every deeper module (down layers after ``b``, the mid block, up layers
consuming skips after ``b`` and the upsamplers after them) returns the output it gave
at the last FULL step instead of running. That is DeepCache's partial inference, done
with ``diffusers.hooks.ModelHook`` on the stock modules: the U-Net's own forward runs
unchanged, so any ``UNet2DModel`` or ``UNet2DConditionModel`` block layout works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from flexnas.errors import FlexnasError

HOOK_NAME = "flexnas_partial"
_KEPT = "_flexnas_partial"  # the U-Net attribute holding hooks kept across plans (a loaded problem's)
MID_DEPTH = 10**9  # the mid block is deeper than every skip


@dataclass(frozen=True)
class Branch:
    """Skip ``index``, named after the module that produces it (e.g. ``down_blocks.1.resnets.0``)."""

    index: int
    name: str


class Mode(str, Enum):
    OFF = "off"  # plain forward
    FULL = "full"  # run and cache
    PARTIAL = "partial"  # serve modules deeper than the branch from the cache


@dataclass
class CacheState:
    """Shared by every hook of one U-Net: the current mode and the features of the last FULL step."""

    mode: Mode = Mode.OFF
    branch: int = -1
    cache: dict[str, Any] = field(default_factory=dict)


def _check_unet(unet: torch.nn.Module) -> None:
    for attr in ("conv_in", "down_blocks", "up_blocks"):
        if not hasattr(unet, attr):
            raise FlexnasError(f"{type(unet).__name__} is not a supported denoiser: flexnas needs a diffusers "
                               "UNet2DModel or UNet2DConditionModel (down_blocks/up_blocks with skips)")


def _deep_modules(unet: torch.nn.Module) -> tuple[list[Branch], list[tuple[str, torch.nn.Module, int]]]:
    """Enumerate branches and every cacheable module with the skip depth it belongs to."""
    _check_unet(unet)
    branches = [Branch(0, "conv_in")]
    modules: list[tuple[str, torch.nn.Module, int]] = []
    for i, block in enumerate(unet.down_blocks):
        attns = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            d = len(branches)
            branches.append(Branch(d, f"down_blocks.{i}.resnets.{j}"))
            modules.append((f"down_blocks.{i}.resnets.{j}", resnet, d))
            if attns is not None and j < len(attns):
                modules.append((f"down_blocks.{i}.attentions.{j}", attns[j], d))
        for j, down in enumerate(getattr(block, "downsamplers", None) or []):
            d = len(branches)
            branches.append(Branch(d, f"down_blocks.{i}.downsamplers.{j}"))
            modules.append((f"down_blocks.{i}.downsamplers.{j}", down, d))
    if getattr(unet, "mid_block", None) is not None:
        modules.append(("mid_block", unet.mid_block, MID_DEPTH))
    skip = len(branches)
    for i, block in enumerate(unet.up_blocks):
        attns = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            skip -= 1  # this resnet consumes skip `skip`
            modules.append((f"up_blocks.{i}.resnets.{j}", resnet, skip))
            if attns is not None and j < len(attns):
                modules.append((f"up_blocks.{i}.attentions.{j}", attns[j], skip))
        for j, up in enumerate(getattr(block, "upsamplers", None) or []):
            # an upsampler's input is the last consumer's output: deep exactly when that consumer is
            modules.append((f"up_blocks.{i}.upsamplers.{j}", up, skip))
    if skip != 0:
        raise FlexnasError(f"{type(unet).__name__}: up path consumes {len(branches) - skip} of {len(branches)} "
                           "skips; this block layout is not supported")
    return branches, modules


def list_branches(unet: torch.nn.Module) -> list[Branch]:
    """The skip branches of ``unet``, shallowest first, read from its actual blocks."""
    return _deep_modules(unet)[0]


class _CacheHook(ModelHook):
    """Runs and caches a module at FULL steps; serves its cached output at PARTIAL steps deeper than the branch.

    Stateful in diffusers' sense: ``HookRegistry.reset_stateful_hooks`` turns it off and forgets its feature.
    """

    _is_stateful = True

    def __init__(self, key: str, depth: int, state: CacheState):
        super().__init__()
        self.key, self.depth, self.state = key, depth, state

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.mode = Mode.OFF
        self.state.cache.pop(self.key, None)
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        st = self.state
        if st.mode is Mode.PARTIAL and self.depth > st.branch:
            try:
                return st.cache[self.key]
            except KeyError:
                raise FlexnasError("a PARTIAL step ran before any FULL step filled the feature cache") from None
        out = self.fn_ref.original_forward(*args, **kwargs)
        if st.mode is Mode.FULL:
            st.cache[self.key] = out
        return out


class PartialUNet:
    """Hooks on one U-Net that make it run FULL (caching) or PARTIAL(b) forwards.

    ``with PartialUNet(unet) as pu: pu.full(); unet(...); pu.partial(2); unet(...)``.
    ``remove()`` restores the stock forwards. ``keep=True`` hooks stay on the U-Net across
    uses (``PartialUNet.use``) and are reset between them (``reset_stateful_hooks``): a
    compiled forward traced through them stays valid from one plan to the next. Hooks are
    found and removed by name (``HOOK_NAME``), as diffusers' cache methods are.
    """

    def __init__(self, unet: torch.nn.Module, keep: bool = False):
        self.unet, self.kept = unet, keep
        self.branches, modules = _deep_modules(unet)
        self.state = CacheState()
        try:
            for key, module, depth in modules:
                reg = HookRegistry.check_if_exists_or_initialize(module)
                if reg.get_hook(HOOK_NAME) is not None:
                    raise FlexnasError(f"{type(unet).__name__} already has flexnas hooks: remove the previous "
                                       "plan first")
                reg.register_hook(_CacheHook(key, depth, self.state), HOOK_NAME)
        except Exception:
            self.remove()  # no half-hooked model
            raise
        if keep:
            unet.__dict__[_KEPT] = self

    @classmethod
    def use(cls, unet: torch.nn.Module) -> "PartialUNet":
        """The hooks kept on ``unet``, or new ones; ``release()`` (or the end of a ``with``) when done."""
        return unet.__dict__.get(_KEPT) or cls(unet)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def off(self) -> None:
        self.state.mode = Mode.OFF

    def full(self) -> None:
        self.state.mode = Mode.FULL

    def partial(self, branch: int) -> None:
        if not 0 <= branch < self.num_branches:
            raise FlexnasError(f"branch {branch} does not exist: {type(self.unet).__name__} has branches "
                               f"0..{self.num_branches - 1}")
        self.state.mode, self.state.branch = Mode.PARTIAL, branch

    def clear(self) -> None:
        self.state.cache.clear()

    def remove(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.unet).remove_hook(HOOK_NAME, recurse=True)
        self.state.cache.clear()
        self.unet.__dict__.pop(_KEPT, None)

    def release(self) -> None:
        """End of one use: kept hooks are reset (off, empty cache), others removed."""
        if self.kept:
            HookRegistry.check_if_exists_or_initialize(self.unet).reset_stateful_hooks(recurse=True)
        else:
            self.remove()

    def __enter__(self) -> "PartialUNet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
