"""Files that outlive a crash of the machine, not only of the process: written, then
``fsync``\\ ed, and their directory ``fsync``\\ ed when a name in it changed."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in directory ``path`` (files created, renamed or deleted) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """``path`` holds ``text`` after a crash, or its old content: written to a temporary
    file, fsynced, renamed over it, and the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)
