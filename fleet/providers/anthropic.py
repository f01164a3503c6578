"""Anthropic Messages API: ``POST {base_url}/messages``.

Headers ``x-api-key`` and ``anthropic-version``. System messages are moved to the top-level
``system`` field as the API requires. Usage comes from ``usage.input_tokens`` /
``usage.output_tokens``.
"""

from __future__ import annotations

from typing import Any

from fleet.providers.base import CompletionRequest, HttpCall, ProviderClient
from fleet.providers.openai_compat import _optional_int

ANTHROPIC_VERSION = "2023-06-01"
"""Value of the ``anthropic-version`` header sent with every request."""


class AnthropicClient(ProviderClient):
    """Client for the Anthropic Messages API (and servers that mimic it)."""

    def build_call(self, request: CompletionRequest, api_key: str | None) -> HttpCall:
        """``POST {base_url}/messages``; system messages become the ``system`` field."""
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        system = [m.get("content", "") for m in request.messages if m.get("role") == "system"]
        messages = [
            {"role": m.get("role", "user"), "content": m.get("content", "")}
            for m in request.messages
            if m.get("role") != "system"
        ]
        payload: dict[str, Any] = {
            "model": request.api_name,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if system:
            payload["system"] = "\n\n".join(system)
        url = self.provider.base_url.rstrip("/") + "/messages"
        return HttpCall(url=url, headers=headers, payload=payload)

    def parse_completion(self, body: Any) -> tuple[str, int | None, int | None]:
        """Concatenated text blocks and the usage counts (None when absent)."""
        blocks = body["content"]
        if not isinstance(blocks, list):
            raise TypeError("content is not a list of blocks")
        text = "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text"
        )
        usage = body.get("usage")
        if not isinstance(usage, dict):
            return text, None, None
        return (
            text,
            _optional_int(usage.get("input_tokens")),
            _optional_int(usage.get("output_tokens")),
        )
