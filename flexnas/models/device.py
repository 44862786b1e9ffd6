"""Where and in which precision a problem runs: ``--device`` and ``--dtype`` checked into torch objects."""

from __future__ import annotations

import torch

from flexnas.errors import FlexnasError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available) as a checked torch device."""
    name = str(device or "cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlexnasError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlexnasError(f"device {name!r} asked for but CUDA is not available here "
                               "(torch.cuda.is_available() is False): use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlexnasError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu" and dev.type != "mps":
        raise FlexnasError(f"unsupported device {name!r}: use cpu, cuda, cuda:N or auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``fp32``/``fp16``/``bf16`` (or a torch dtype) as a torch dtype; None keeps the loaded one."""
    if dtype is None or isinstance(dtype, torch.dtype):
        out = dtype
    else:
        out = DTYPES.get(str(dtype).lower())
        if out is None:
            raise FlexnasError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16")
    if out is torch.float16 and device.type == "cpu":
        raise FlexnasError("fp16 runs on a GPU only: use --device cuda with --dtype fp16 (on CPU use fp32 or bf16)")
    return out
