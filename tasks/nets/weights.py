"""Reading weight files without running pickled code: `torch.load(weights_only=True)` and one message for a refusal.

    from tasks.nets.weights import load_tensors_file
    state = load_tensors_file(Path("model.pt"), what="checkpoint")   # a ConfigError for a pickle with code in it

Shared by the train stage (resumable checkpoints) and the model stage
(`model.init_from`).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from schemas.errors import ConfigError
from tasks.common.files import check_fits_memory, check_input_file


def load_tensors_file(path: Path, what: str = "checkpoint", hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a ConfigError naming `path` when it is refused or unreadable.

    Checked first: a regular file (a FIFO would block, a device never end),
    whose members, as its zip directory declares them, fit in the memory
    available. I/O errors propagate (they may be transient: a stage's retry
    policy decides).
    """
    check_input_file(path, what, ConfigError)
    _check_declared_size(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        raise ConfigError(refused_message(path, exc, what, hint)) from None
    except Exception as exc:  # a truncated or foreign file: say which, don't guess
        raise ConfigError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


def _check_declared_size(path: Path, what: str) -> None:
    """A ConfigError when the uncompressed members a zip-format file declares would not fit in memory."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):  # the legacy format, or not a zip: torch.load says
        return
    check_fits_memory(path, declared, what, ConfigError, how=" (the sizes its archive declares)")


def refused_message(path: Path, exc: Exception, what: str = "checkpoint", hint: str = "") -> str:
    """Why `torch.load(weights_only=True)` refused `path`, without torch's advice to load it unsafely."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return f"{path}: not a readable {what} ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    found_what = f" ({found.group(1)})" if found else ""
    return (
        f"{path}: refused: the {what} holds pickled Python objects{found_what}, which could run code when "
        f"loaded, so it is not loaded (for safety){'. ' + hint if hint else ''}"
    )
