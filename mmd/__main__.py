from __future__ import annotations

from mmd.cli import entry

entry()
