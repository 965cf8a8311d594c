"""The built-in simulator of an AUTOMATIC1111 / Forge web UI server (placeholder images, no model).

It imports nothing from the rest of batchgen, and the client side imports nothing from it.
"""

from .config import SimConfig
from .server import SimServer, serve
from .stats import SimStats

__all__ = ["SimConfig", "SimServer", "SimStats", "serve"]
