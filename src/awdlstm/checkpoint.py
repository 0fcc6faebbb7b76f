"""Checkpoints: state dicts and plain values only, loadable with ``weights_only=True``,
written atomically (temporary file, flush, fsync, rename), so a crash at any moment
leaves the previous checkpoint whole."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config
from .errors import CheckpointError, ConfigError, cause_of

FORMAT = "awdlstm-checkpoint"
VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Write through ``write(fileobj)`` to a temporary file, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        os_err = cause_of(err, OSError)
        if os_err is not None:
            err = os_err
            kept = "the previous file is intact" if path.exists() else "nothing was written"
            raise CheckpointError(f"could not write {path} ({err.strerror or err}); {kept}; free disk space and resume") from None
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    atomic_save({"format": FORMAT, "version": VERSION, **payload}, path)


def _unreadable(err: BaseException) -> str:
    """Why torch.load failed, in words rather than PyTorch's internals."""
    text = str(err).strip()
    if isinstance(err, EOFError) or "central directory" in text:
        return "the file is cut short (truncated while it was written or copied)"
    if isinstance(err, zipfile.BadZipFile) or "not a ZIP archive" in text:
        return "not a checkpoint file (damaged, or not written by torch.save)"
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "not a checkpoint of tensors and plain values (damaged, or not written by awdlstm)"
    if isinstance(err, OSError):
        return f"cannot be read ({err.strerror or text})"
    first = text.splitlines()[0] if text else type(err).__name__
    return f"damaged or not an awdlstm checkpoint ({first[:120]})"


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there; train first (awdlstm train ... --out RUN)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: {_unreadable(err)}; use another checkpoint (the run's best.pt or last.pt) "
                              "or retrain") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an awdlstm checkpoint")
    if blob.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {blob.get('version')} but this awdlstm reads version {VERSION}; "
            "use the awdlstm release that wrote it"
        )
    return blob


def checkpoint_config(ckpt: dict[str, Any], path: Path):
    """The Config a checkpoint was trained with; a CheckpointError naming the problem when it
    cannot be read by this release (a key added or removed by another version, say)."""
    try:
        return Config.from_dict(ckpt["config"])
    except KeyError:
        raise CheckpointError(f"{path}: holds no config; use a best.pt or last.pt written by awdlstm") from None
    except ConfigError as err:
        raise CheckpointError(
            f"{path}: its config does not fit this awdlstm {_release()} ({err}); "
            f"use the awdlstm release that wrote it"
        ) from None


def _release() -> str:
    return __version__


def load_weights(model: torch.nn.Module, state: Any, where: str) -> None:
    """``model.load_state_dict(state)``, or a CheckpointError that names the first tensor
    that is missing, extra or of another shape (another architecture or vocabulary size)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: holds no model weights; use a best.pt or last.pt written by awdlstm")
    own = model.state_dict()
    problems = [f"{k} is missing" for k in own if k not in state]
    problems += [f"{k} is not part of this model" for k in state if k not in own]
    problems += [
        f"{k} is {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if not problems:
        try:
            model.load_state_dict(state)
            return
        except (RuntimeError, TypeError) as err:
            problems = [str(err).strip().splitlines()[-1][:150]]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise CheckpointError(
        f"{where}: weights do not fit this model configuration: {problems[0]}{more}; "
        "the checkpoint belongs to another architecture or vocabulary"
    )
