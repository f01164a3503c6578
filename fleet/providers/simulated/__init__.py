"""A simulated LLM provider you can break on purpose (standard library only).

It speaks OpenAI chat completions (``POST /v1/chat/completions``, ``GET /v1/models``) and
Anthropic Messages (``POST /v1/messages``) on 127.0.0.1, with deterministic usage counts and
fault modes switchable at runtime through a control port (see :mod:`.modes` for the list).

- :class:`SimulatedProvider`: run it in-process (threads), as a context manager.
- :class:`SimControl`: switch modes and read per-mode request counts from anywhere.
- ``python -m fleet.providers.simulated --port P``: run it as a process or container.

Nothing here imports pydantic, httpx or the rest of ``fleet``, so the package also runs in a
minimal container holding only the Python standard library.
"""

from .control import SimControl
from .modes import MODES, ModeSettings, default_control_port
from .server import SimulatedProvider, serve_until_signalled

__all__ = [
    "MODES",
    "ModeSettings",
    "SimControl",
    "SimulatedProvider",
    "default_control_port",
    "serve_until_signalled",
]
