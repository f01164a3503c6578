"""Small single-call agents on the remaining task types (and their failure policies):
``triage.classify`` (``classification``: degrade) and ``extract.fields``
(``structured_extraction``: fail)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet.llm import llm_call
from workers.catalog import agent


class TextPayload(BaseModel):
    """A text to work on."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=100_000)


@agent("triage.classify", "classification", payload_model=TextPayload)
def classify(payload: TextPayload) -> dict[str, str]:
    """Label the text with one category."""
    messages = [{"role": "user", "content": f"One-word category for: {payload.text}"}]
    return {"label": llm_call("classification", messages).text}


@agent("extract.fields", "structured_extraction", payload_model=TextPayload)
def extract(payload: TextPayload) -> dict[str, str]:
    """Extract structured fields from the text."""
    messages = [{"role": "user", "content": f"Extract the fields as JSON from: {payload.text}"}]
    return {"fields": llm_call("structured_extraction", messages).text}
