"""Run folders that never lose work: checksummed evaluation records, a lock, checkpoints, progress.

See docs/DESIGN.md, section 8 (reliability contract).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
from pymoo.core.callback import Callback

from flexnas.errors import FlexnasError, writable_folder


class EvalCache:
    """Canonical genome -> result, persisted as JSON lines in the run folder.

    Each line carries a checksum of its record: a line cut short or altered (a run killed
    mid-write, a damaged disk) is skipped and that genome evaluated again, and a record
    appended after a cut line starts on a line of its own.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        data = path.read_bytes() if path.is_file() else b""
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "key" in r and r.pop("check", None) in (None, _checksum(r)):
                self.records[r["key"]] = r
        self._newline = bool(data) and not data.endswith(b"\n")

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["key"]] = record
        line = json.dumps({**record, "check": _checksum(record)}) + "\n"
        with self.path.open("a") as f:
            f.write("\n" + line if self._newline else line)
            f.flush()
            os.fsync(f.fileno())
        self._newline = False


def _checksum(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


LOCK = ".lock"  # pid and host of the process writing the run folder


def _owner(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SUBFOLDERS = ("plans", "grids")  # the only folders in a run folder; everything else is a file


def _check_layout(out: Path) -> None:
    """A run folder holds files, and the plans/ and grids/ folders of files: refuse anything else
    before writing, so a resume never stops half-way over a folder where a file should be."""
    for p in sorted(out.iterdir()):
        inner = list(p.iterdir()) if p.is_dir() and p.name in SUBFOLDERS else []
        for q in ([p] if p.name not in SUBFOLDERS else inner):
            if not q.is_file():
                raise FlexnasError(f"{q} should be a file but is not: remove it, then --resume again (it is "
                                   "rebuilt)")


def _held(owner: tuple[int, str] | None) -> bool:
    """Whether a lock's owner may still run (another host's, or a live process here)."""
    return owner is not None and (owner[1] != socket.gethostname() or _alive(owner[0]))


@contextmanager
def run_folder(out: Path, resume: bool):
    """The run folder, checked (new: absent or empty; ``resume``: present) and locked for this process.

    The lock file holds the owner's pid and host; a lock whose process is gone (killed) is stale
    and taken over. A folder this call created is removed again if it ends empty (a failed start).
    """
    if resume:
        if not out.is_dir():
            raise FlexnasError(f"--resume: run folder {out} does not exist")
        _check_layout(out)
    else:
        if out.exists() and not out.is_dir():
            raise FlexnasError(f"--out {out} is a file: give a folder")
        if out.exists() and any(p.name != LOCK or _held(_owner(p)) for p in out.iterdir()):
            raise FlexnasError(f"run folder {out} already exists: pass --resume to continue it, or choose another --out")
    created = not out.exists()
    writable_folder(out)
    lock, me = out / LOCK, f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _owner(lock)
            if _held(owner):
                raise FlexnasError(f"run folder {out} is in use by process {owner[0]} on {owner[1]}: wait for it to "
                                   f"finish (or stop it), or remove {lock} if that process is gone") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    else:
        raise FlexnasError(f"cannot lock run folder {out}: another process keeps taking it")
    try:
        yield out
    finally:
        if _owner(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


class Progress(Callback):
    """What a person follows: generations done, plans evaluated in the current one (with cache hits
    and an ETA), and the front's best plan that is not the teacher. The bar is not checkpointed."""

    def __init__(self, gens: int, done: int, label: str):
        from tqdm.auto import tqdm

        super().__init__()
        self.bar = tqdm(total=gens, initial=min(done, gens), desc=label, unit="gen", dynamic_ncols=True)
        self.front = ""
        self.start(0, 0)

    def start(self, asked: int, cached: int) -> None:
        self.asked, self.cached, self.done, self.t0 = asked, cached, 0, time.time()
        self._show()

    def step(self) -> None:
        self.done += 1
        self._show()

    def _show(self) -> None:
        left = self.asked - self.cached - self.done
        eta = f" eta {(time.time() - self.t0) / self.done * left:.0f}s" if self.done and left else ""
        self.bar.set_postfix_str(f"plans {self.cached + self.done}/{self.asked} ({self.cached} cached){eta}"
                                 f"{self.front}", refresh=True)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bar": None}

    def _update(self, algorithm) -> None:
        if self.bar is None:  # unpickled from a checkpoint: the resumed run has its own
            return
        F, obj = algorithm.opt.get("F"), algorithm.problem.config.objective
        fast = F[F[:, 1] < 1 - 1e-9] if F.shape[1] > 1 else F  # NSGA-II: leave out the teacher (MACs ratio 1)
        if len(fast):
            best = fast[np.argmin(fast[:, 0])]
            at = f" at {1 / best[1]:.1f}x MACs" if F.shape[1] > 1 else ""
            self.front = f" · front {len(F)}, best non-teacher {obj} {best[0]:.4g}{at}"
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()


class Checkpoint(Callback):
    """After every generation: pickle the algorithm atomically."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def _update(self, algorithm) -> None:
        problem = algorithm.problem
        problem.generation = algorithm.n_gen + 1
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            cloudpickle.dump(algorithm, f)  # pymoo's GA holds local functions plain pickle refuses
        os.replace(tmp, self.path)
