"""What every ``shg-fast`` command shares: option validators, path checks, atomic writes.

The rule: every option and every output path is checked before any work starts; a bad one is
one line on stderr naming the option and what was expected, exit status 2; and nothing partly
written is left behind.

* Validators (``int_in``, ``float_in``, ``device``, ``input_file``, ``output_file``, ...) are
  argparse ``type=`` callables: argparse reports their ``ArgumentTypeError`` as
  ``argument --scale: expected ...``, and :class:`Parser` prints that as one line.
* ``check_*`` functions check what needs the machine or several options (is CUDA present, is
  ``$SHG_FAST_BACKEND`` valid, is matplotlib installed) and raise :class:`CLIError`.
* :func:`atomic_path` gives a temporary name next to an output; the file is renamed into place
  only when written completely.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Callable

from shg_fast._atomic import atomic_path

__all__ = ["CLIError", "Parser", "int_in", "float_in", "device", "input_file", "input_dir", "checkpoint_file",
           "output_file", "output_dir", "retype", "check_device", "check_backend_env", "check_matplotlib", "atomic_path",
           "write_text", "IMAGE_SUFFIXES"]

#: Formats matplotlib writes without extra packages (for --plot / --curve).
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


class CLIError(Exception):
    """A user-facing error: printed as one line, no traceback; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``shg-fast CMD: error: ...``), exit status 2.

    Subparsers made by ``add_subparsers`` inherit the class.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """A validator for an integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, *, open_low: bool = False) -> Callable[[str], float]:
    """A validator for a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``)."""
    bounds = f"{'(' if open_low else '['}{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a finite number in {bounds}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def device(text: str) -> str:
    """A validator for ``cpu``, ``cuda`` or ``cuda:N`` (whether it is present: :func:`check_device`)."""
    name = text.strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return name


def input_file(text: str) -> str:
    """A validator for an existing, readable file."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"expected an existing file, {text!r} does not exist")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"expected a file, {text!r} is a folder")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"expected a readable file, {text!r} cannot be read")
    return text


def input_dir(text: str) -> str:
    """A validator for an existing folder."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected an existing folder, got {text!r}")
    return text


def checkpoint_file(text: str) -> str:
    """A validator for a file written by ``torch.save`` (a zip archive, or a pickle in the legacy format)."""
    input_file(text)
    with open(text, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)):
        raise argparse.ArgumentTypeError(f"expected a torch.save file, {text!r} is not a PyTorch checkpoint "
                                         "(neither a zip archive nor a pickle)")
    return text


def _writable_dir(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (an existing path), or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None


def output_file(suffixes: tuple[str, ...] | None = None) -> Callable[[str], str]:
    """A validator for a file to write: its folder exists and is writable, it is not a folder,
    and its suffix is one of ``suffixes`` (when given)."""

    def parse(text: str) -> str:
        path = Path(text)
        if suffixes is not None and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"expected a file name ending in {', '.join(suffixes)}, got {text!r}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"expected a file name, {text!r} is a folder")
        parent = path.absolute().parent
        if not parent.exists():
            raise argparse.ArgumentTypeError(f"the folder of {text!r} ({parent}) does not exist")
        why = _writable_dir(parent)
        if why:
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: {why}")
        return text

    parse.__name__ = "file name"
    return parse


def output_dir(text: str) -> str:
    """A validator for an output folder: an existing writable folder, or one that can be created
    (its nearest existing parent is a writable folder). It is not created here."""
    path = Path(text).absolute()
    if path.exists():
        why = _writable_dir(path)
        if why:
            raise argparse.ArgumentTypeError(f"expected a writable folder, {why}")
        return text
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    why = _writable_dir(parent)
    if why:
        raise argparse.ArgumentTypeError(f"cannot create folder {text!r}: {why}")
    return text


def retype(parser: argparse.ArgumentParser, validators: dict[str, Callable[[str], object]]) -> None:
    """Give options defined elsewhere (by ``dest``) these validators as their ``type``."""
    found = set()
    for action in parser._actions:
        if action.dest in validators:
            action.type = validators[action.dest]
            found.add(action.dest)
    missing = set(validators) - found
    if missing:
        raise KeyError(f"no options {sorted(missing)} to validate")


def check_device(name: str | None, option: str = "--device") -> None:
    """CLIError unless ``name`` (from :func:`device`; None: the default) can run here."""
    if name is None or name == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise CLIError(f"{option} {name}: no CUDA GPU is available (torch.cuda.is_available() is False); use cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise CLIError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")


def check_backend_env() -> None:
    """CLIError naming ``$SHG_FAST_BACKEND`` when it names no backend."""
    from ..backends import requested_backend

    try:
        requested_backend()
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def check_matplotlib(option: str) -> None:
    """CLIError when ``option`` needs matplotlib and it is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise CLIError(f"{option} needs matplotlib, which is not installed (pip install matplotlib)")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
