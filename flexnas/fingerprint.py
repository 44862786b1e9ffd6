"""Content hashes of torch modules: how cache keys tell one set of weights from another."""

from __future__ import annotations

import hashlib

import torch


def module_digest(*modules: torch.nn.Module | None, config: bool = True) -> str:
    """A short SHA-256 of the modules' state dicts (and diffusers configs when ``config``), in order;
    None entries are skipped, so an optional component (a VAE) can be passed as it is. The config's
    ``_name_or_path`` (where the weights were loaded from) is left out: the same weights in another
    folder or clone are the same model, and their cached features stay valid."""
    h = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        if config:
            h.update(repr(sorted((k, v) for k, v in dict(module.config).items() if k != "_name_or_path")).encode())
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
