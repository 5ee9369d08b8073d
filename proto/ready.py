"""How a component tells whoever started it that it is up, and where: once its sockets are
bound (port 0 or `*`: the system picks a free one, so there is no pick-then-bind race), it
writes the addresses it bound to a small JSON file, atomically. The starter reads the file, then
confirms over the protocol that the component answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def announce_ready(path: Path | str | None, **addresses: str) -> None:
    """Write `addresses` to `path` (nothing when no path was given)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(addresses))
    tmp.replace(path)


def read_ready(path: Path) -> dict[str, str] | None:
    """The addresses a component announced, or None before it has."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
