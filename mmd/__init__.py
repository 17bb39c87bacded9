"""mmd, the model manager daemon: keeps a node's model storage as a YAML manifest asks."""

from __future__ import annotations

__version__ = "0.1.0"
