"""Built-in sources, each an ordinary plugin module."""
