"""A two-agent research chain: research (task type ``data_collection``) -> summary (task type
``content_scraping``), and ``research.brief`` doing both steps inside one job::

    fleet.jobs.submit_pipeline(RESEARCH_CHAIN, {"topic": "circuit breakers"})
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet.llm import llm_call
from workers.catalog import agent

RESEARCH_CHAIN = ["research.research", "research.summary"]


class ResearchState(BaseModel):
    """A topic, then its findings, then their summary."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=500)
    findings: str | None = None
    summary: str | None = None


@agent("research.research", "data_collection", payload_model=ResearchState)
def research(state: ResearchState) -> ResearchState:
    """Gather findings on the topic (one ``llm_call``)."""
    messages = [{"role": "user", "content": f"Research this topic: {state.topic}"}]
    return state.model_copy(update={"findings": llm_call("data_collection", messages).text})


@agent("research.summary", "content_scraping", payload_model=ResearchState)
def summary(state: ResearchState) -> ResearchState:
    """Summarise the findings (one ``llm_call``)."""
    messages = [{"role": "user", "content": f"Summarise: {state.findings or state.topic}"}]
    return state.model_copy(update={"summary": llm_call("content_scraping", messages).text})


@agent("research.brief", "data_collection", payload_model=ResearchState)
def brief(state: ResearchState) -> ResearchState:
    """Research then summarise in one job (two ``llm_call`` steps: a redelivered job reuses
    the first step from the step cache)."""
    findings = research(state)
    return summary(findings)
