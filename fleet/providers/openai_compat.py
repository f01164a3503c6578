"""OpenAI-compatible chat completions: OpenAI, vLLM, Ollama, SambaNova, Nebius, the simulator.

``POST {base_url}/chat/completions`` with ``Authorization: Bearer <key>`` when the provider
names a key. Usage comes from ``usage.prompt_tokens`` / ``usage.completion_tokens``; a
provider that sends no usage yields ``None`` counts (``llm_call`` estimates and flags them).
"""

from __future__ import annotations

from typing import Any

from fleet.providers.base import CompletionRequest, HttpCall, ProviderClient


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"token count must be a non-negative integer, got {value!r}")
    return value


class OpenAICompatClient(ProviderClient):
    """Client for any server speaking the OpenAI chat-completions protocol."""

    def build_call(self, request: CompletionRequest, api_key: str | None) -> HttpCall:
        """``POST {base_url}/chat/completions`` with the messages, model and limits."""
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        payload: dict[str, Any] = {
            "model": request.api_name,
            "messages": [dict(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": False,
        }
        url = self.provider.base_url.rstrip("/") + "/chat/completions"
        return HttpCall(url=url, headers=headers, payload=payload)

    def parse_completion(self, body: Any) -> tuple[str, int | None, int | None]:
        """Text of the first choice and the usage counts (None when absent)."""
        message = body["choices"][0]["message"]
        text = message.get("content")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise TypeError("choices[0].message.content is not a string")
        usage = body.get("usage")
        if not isinstance(usage, dict):
            return text, None, None
        return (
            text,
            _optional_int(usage.get("prompt_tokens")),
            _optional_int(usage.get("completion_tokens")),
        )
