"""Example agents (imported by ``FLEET_AGENT_MODULES=workers.agents``, the default).

- :mod:`workers.agents.seo`: the four-step SEO pipeline (``SEO_PIPELINE``);
- :mod:`workers.agents.research`: research -> summary (``RESEARCH_CHAIN``);
- :mod:`workers.agents.utility`: ``triage.classify`` and ``extract.fields``.

Write your own with :func:`workers.catalog.agent`.
"""

from workers.agents import research, seo, utility
from workers.agents.research import RESEARCH_CHAIN
from workers.agents.seo import SEO_PIPELINE
from workers.catalog import AgentCatalog, AgentSpec, agent, load_catalog

__all__ = [
    "RESEARCH_CHAIN",
    "SEO_PIPELINE",
    "AgentCatalog",
    "AgentSpec",
    "agent",
    "load_catalog",
    "research",
    "seo",
    "utility",
]
