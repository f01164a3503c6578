"""Breaker scopes: which breaker a call is counted against.

A call to model ``llama-70b`` at provider ``sambanova`` is guarded by two scopes: the provider
scope ``sambanova`` (the whole endpoint is down) and the model scope ``sambanova/llama-70b``
(one model is overloaded). Both keys carry the provider as their Redis Cluster hash tag, so one
acquire or record touches a single slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from breaker_service.errors import PolicyError

_PROVIDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


@dataclass(frozen=True, order=True)
class Scope:
    """One breaker scope: a provider, or one model of a provider.

    ``provider`` is 1-64 characters of ``A-Z a-z 0-9 . _ -``; ``model`` (the registry's short
    model name, e.g. ``llama-70b``) is 1-128 characters that may also hold ``: / @ +``. Scopes
    sort by provider, the provider scope before its model scopes.
    """

    provider: str
    model: str | None = field(default=None, compare=False)
    _model_key: str = field(init=False, repr=False, compare=True)

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or not _PROVIDER_RE.fullmatch(self.provider):
            raise PolicyError(
                f"scope provider {self.provider!r} is invalid: use 1-64 characters of "
                "letters, digits, '.', '_' or '-' (for example 'sambanova')"
            )
        if self.model is not None and (
            not isinstance(self.model, str) or not _MODEL_RE.fullmatch(self.model)
        ):
            raise PolicyError(
                f"scope model {self.model!r} is invalid: use 1-128 characters of letters, "
                "digits and '._:/@+-', starting with a letter or digit (for example 'llama-70b'),"
                " or model=None for the provider scope"
            )
        object.__setattr__(self, "_model_key", self.model or "")

    def __str__(self) -> str:
        """``provider`` or ``provider/model``."""
        return self.provider if self.model is None else f"{self.provider}/{self.model}"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The scope written as ``text`` (``"sambanova"`` or ``"sambanova/llama-70b"``).

        Raises :class:`~breaker_service.errors.PolicyError` naming the fix on bad text.
        """
        if not isinstance(text, str) or not text.strip():
            raise PolicyError(
                f"scope {text!r} is empty: write 'provider' or 'provider/model' "
                "(for example 'sambanova/llama-70b')"
            )
        provider, sep, model = text.strip().partition("/")
        if sep and not model:
            raise PolicyError(
                f"scope {text!r} has an empty model: drop the trailing '/' for the provider "
                "scope, or name the model ('sambanova/llama-70b')"
            )
        return cls(provider, model if sep else None)

    @property
    def hash_tag(self) -> str:
        """``{provider}``: every key of one acquire/record shares one Redis Cluster slot."""
        return "{" + self.provider + "}"

    @property
    def provider_scope(self) -> Scope:
        """The provider scope this scope belongs to (itself for a provider scope)."""
        return self if self.model is None else Scope(self.provider)
