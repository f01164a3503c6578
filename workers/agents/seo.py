"""The four-step SEO pipeline: data_collection -> content_scraping -> gap_analysis ->
recommendations. Each step is an agent on its own task type (hence its own tier and failure
policy) and passes an :class:`SeoState` that grows one field per step::

    fleet.jobs.submit_pipeline(SEO_PIPELINE, {"domain": "example.com", "keywords": ["llm"]})
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet.llm import llm_call
from workers.catalog import agent

SEO_PIPELINE = [
    "seo.data_collection",
    "seo.content_scraping",
    "seo.gap_analysis",
    "seo.recommendations",
]


class SeoState(BaseModel):
    """Input and output of every SEO step; each step fills the next field."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(min_length=1, max_length=253, description="Site to analyse.")
    keywords: list[str] = Field(default_factory=list, max_length=50)
    collected: str | None = None
    scraped: str | None = None
    gaps: str | None = None
    recommendations: str | None = None


def _ask(task_type: str, instruction: str, context: str) -> str:
    messages = [
        {"role": "system", "content": "You are an SEO analyst. Answer concisely."},
        {"role": "user", "content": f"{instruction}\n\n{context}"},
    ]
    return llm_call(task_type, messages).text


@agent("seo.data_collection", "data_collection", payload_model=SeoState)
def data_collection(state: SeoState) -> SeoState:
    """Collect facts about the domain and its keywords."""
    text = _ask(
        "data_collection",
        "List the facts and sources relevant to this site's search presence.",
        f"domain: {state.domain}\nkeywords: {', '.join(state.keywords)}",
    )
    return state.model_copy(update={"collected": text})


@agent("seo.content_scraping", "content_scraping", payload_model=SeoState)
def content_scraping(state: SeoState) -> SeoState:
    """Turn the collected material into clean key points."""
    text = _ask("content_scraping", "Extract the key points.", state.collected or "")
    return state.model_copy(update={"scraped": text})


@agent("seo.gap_analysis", "gap_analysis", payload_model=SeoState)
def gap_analysis(state: SeoState) -> SeoState:
    """List what the site's content misses for its keywords."""
    text = _ask(
        "gap_analysis",
        f"Which topics for {', '.join(state.keywords) or state.domain} are missing?",
        state.scraped or "",
    )
    return state.model_copy(update={"gaps": text})


@agent("seo.recommendations", "recommendations", payload_model=SeoState)
def recommendations(state: SeoState) -> SeoState:
    """Write prioritised recommendations from the gap analysis."""
    text = _ask("recommendations", "Write prioritised recommendations.", state.gaps or "")
    return state.model_copy(update={"recommendations": text})
