"""The agent catalog: ``@agent`` registers a function as a named agent that jobs can run.

An agent is ``fn(payload) -> JSON-able result`` where ``payload`` is an instance of its
pydantic ``payload_model``. Agents reach models only through :func:`fleet.llm_call`; they never
touch providers or breakers. Workers and :func:`fleet.jobs.submit` load the same modules
(``FLEET_AGENT_MODULES``, default ``workers.agents``) so both see the same catalog.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from fleet.errors import ConfigError
from fleet.settings import FleetSettings

AGENTS_QUEUE = "agents"
ESCALATION_QUEUE = "escalation"

F = TypeVar("F", bound=Callable[..., Any])
AgentFn = Callable[[Any], Any]


@dataclass(frozen=True)
class AgentSpec:
    """One registered agent: its name, task type (whose failure policy applies), payload
    schema, queue and function."""

    name: str
    task_type: str
    payload_model: type[BaseModel]
    queue: str
    fn: AgentFn


class AgentCatalog:
    """Agents by name. ``register`` refuses a second, different function under one name."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentSpec] = {}

    def register(self, spec: AgentSpec) -> None:
        """Add ``spec``; re-registering the same function (a module reload) is a no-op."""
        existing = self._agents.get(spec.name)
        if existing is not None and existing.fn.__qualname__ != spec.fn.__qualname__:
            raise ConfigError(
                f"agent name {spec.name!r} is registered twice "
                f"({existing.fn.__module__}.{existing.fn.__qualname__} and "
                f"{spec.fn.__module__}.{spec.fn.__qualname__}); rename one of them"
            )
        self._agents[spec.name] = spec

    def get(self, name: str) -> AgentSpec | None:
        """The agent called ``name``, or None."""
        return self._agents.get(name)

    def names(self) -> list[str]:
        """Every registered agent name, sorted."""
        return sorted(self._agents)


DEFAULT_CATALOG = AgentCatalog()


def agent(
    name: str,
    task_type: str,
    *,
    payload_model: type[BaseModel],
    queue: str = AGENTS_QUEUE,
    catalog: AgentCatalog | None = None,
) -> Callable[[F], F]:
    """Register the decorated ``fn(payload: payload_model) -> JSON-able`` as agent ``name``.

    ``task_type`` names the registry task profile whose local-failure policy applies when the
    agent's ``llm_call`` fails on every route. The function is returned unchanged.
    """

    def decorate(fn: F) -> F:
        spec = AgentSpec(
            name=name, task_type=task_type, payload_model=payload_model, queue=queue, fn=fn
        )
        (catalog or DEFAULT_CATALOG).register(spec)
        return fn

    return decorate


def load_catalog(settings: FleetSettings) -> AgentCatalog:
    """Import every module of ``settings.agent_modules`` and return the filled catalog.

    Raises :class:`~fleet.errors.ConfigError` naming ``FLEET_AGENT_MODULES`` when a module
    cannot be imported.
    """
    for module in (m.strip() for m in settings.agent_modules.split(",")):
        if not module:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"FLEET_AGENT_MODULES: cannot import agent module {module!r} ({exc}); "
                "list importable modules separated by commas"
            ) from exc
    return DEFAULT_CATALOG
