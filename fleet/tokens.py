"""Token estimates used before a call (context-window checks) and when a provider sends no usage.

The estimate is deliberately simple and slightly pessimistic: about four characters per token
plus a small per-message overhead for roles and separators, as chat templates add. Estimated
counts are flagged (``Usage.estimated``) wherever they are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CHARS_PER_TOKEN = 4
PER_MESSAGE_OVERHEAD = 4


def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (ceil(chars / 4), at least 1 for non-empty text)."""
    if not text:
        return 0
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def estimate_prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Estimated prompt tokens of chat ``messages`` (content plus per-message overhead)."""
    return sum(
        estimate_text_tokens(str(m.get("content", ""))) + PER_MESSAGE_OVERHEAD for m in messages
    )
