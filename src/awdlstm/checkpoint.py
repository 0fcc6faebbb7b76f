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

from .errors import CheckpointError

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


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err`` (torch.save reports a failed write as a RuntimeError)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


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
        os_err = _os_error(err)
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there; train first (awdlstm train ... --out RUN)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: damaged or not an awdlstm checkpoint ({first[:120]}); use another checkpoint or retrain") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an awdlstm checkpoint")
    if blob.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {blob.get('version')} but this awdlstm reads version {VERSION}; "
            "use the awdlstm release that wrote it"
        )
    return blob
