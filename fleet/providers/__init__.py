"""Provider clients (httpx, one request per call, real deadlines) and the simulated provider.

- :func:`make_http_client`: the one connection pool a process shares, owned by its caller.
- :func:`make_provider_client`: the client for a provider config, chosen by its ``kind``.
- :mod:`fleet.providers.simulated`: a stdlib HTTP server with switchable fault modes.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from fleet.errors import ConfigError
from fleet.providers.anthropic import AnthropicClient
from fleet.providers.base import (
    Completion,
    CompletionRequest,
    ProviderClient,
    ProviderConfig,
)
from fleet.providers.http import make_http_client
from fleet.providers.openai_compat import OpenAICompatClient

PROVIDER_KINDS: Mapping[str, type[ProviderClient]] = {
    "openai": OpenAICompatClient,
    "simulated": OpenAICompatClient,
    "anthropic": AnthropicClient,
}
"""Provider ``kind`` -> client class."""


def make_provider_client(
    provider: ProviderConfig,
    http: httpx.Client,
    *,
    environ: Mapping[str, str] | None = None,
) -> ProviderClient:
    """The client for ``provider`` (by ``provider.kind``), sending through ``http``.

    ``environ`` is where API keys are looked up at call time (default ``os.environ``).
    Raises ``ConfigError`` naming the provider and the known kinds for an unknown kind.
    """
    cls = PROVIDER_KINDS.get(provider.kind)
    if cls is None:
        raise ConfigError(
            f"provider {provider.name!r} has kind {provider.kind!r}; "
            f"use one of: {', '.join(sorted(PROVIDER_KINDS))}"
        )
    return cls(provider, http, environ=environ)


__all__ = [
    "PROVIDER_KINDS",
    "AnthropicClient",
    "Completion",
    "CompletionRequest",
    "OpenAICompatClient",
    "ProviderClient",
    "ProviderConfig",
    "make_http_client",
    "make_provider_client",
]
