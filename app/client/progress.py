"""Progress bars for transfers (tqdm: small, no dependencies of its own, and it draws
nothing when stderr is not a terminal, so scripts and CI logs stay clean)."""

from __future__ import annotations

import shutil
import sys
from typing import Any

from tqdm import tqdm


def bar(label: str, total: int, enabled: bool | None = None) -> Any:
    """A bytes bar on stderr; with enabled=None only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    size = shutil.get_terminal_size((80, 24))
    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        disable=not enabled,
        # A terminal that reports no size (a serial console, script(1)) makes tqdm draw
        # nothing at all: assume 80x24 then.
        ncols=size.columns,
        nrows=size.lines,
        file=sys.stderr,
    )
