"""How an input row becomes a sample: the format and its columns. Scoring, training on raw shards and
evaluation share it, so they read a row alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Format = Literal["text", "prompt_response", "messages"]
Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the sample (text, or a conversation), the id and the group (domain/source).

    ``format`` says how a sample is read: ``text`` from ``text``; ``prompt_response`` from ``prompt`` and
    ``response`` (and ``system`` when set) as a one-turn conversation; ``messages`` from a list of
    ``{role, content}`` objects in ``messages``.
    """

    text: str = "text"
    id: str | None = None
    group: str | None = None
    format: Format = "text"
    prompt: str = "prompt"
    response: str = "response"
    system: str | None = None
    messages: str = "messages"

    @property
    def sample_columns(self) -> list[tuple[str, str]]:
        """(flag, column) of the columns that make up one sample in this format."""
        if self.format == "text":
            return [("--text-column", self.text)]
        if self.format == "messages":
            return [("--messages-column", self.messages)]
        pairs = [("--prompt-column", self.prompt), ("--response-column", self.response)]
        return pairs + ([("--system-column", self.system)] if self.system else [])


class SampleFormat(BaseModel):
    """How an input row becomes a sample. Scoring, training on raw shards and eval share it, so they agree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["text", "prompt_response", "messages"] = Field(
        "text",
        description="text: a text column; prompt_response: prompt/response (+ system) columns; messages: a list of "
        "{role, content}. The last two are rendered with the chat template and scored on the assistant tokens only",
    )
    text_column: str = Field("text", description="column holding the text (format text)")
    prompt_column: str = Field("prompt", description="column holding the prompt (format prompt_response)")
    response_column: str = Field("response", description="column holding the response (format prompt_response)")
    system_column: str | None = Field(None, description="optional column holding a system prompt (format prompt_response)")
    messages_column: str = Field("messages", description="column holding the list of {role, content} (format messages)")
    chat_template: str | None = Field(
        None, description="a Jinja chat template file (or the template itself) replacing the tokenizer's own"
    )

    def sample_format(self) -> dict:
        """These keys and values, to hand to another stage's config."""
        return {name: getattr(self, name) for name in SampleFormat.model_fields}

    def columns(self, id_column: str | None = None, group_column: str | None = None) -> Columns:
        return Columns(
            text=self.text_column, id=id_column, group=group_column, format=self.format, prompt=self.prompt_column,
            response=self.response_column, system=self.system_column, messages=self.messages_column,
        )


LongDocuments = Literal["truncate", "windows"]


def check_long_documents(fmt: str, long_documents: str, window_context: int, max_tokens: int) -> None:
    """What ``--long-documents`` and ``--window-context`` allow (scoring and eval share it): windows are for text,
    a context is read only by windows and leaves each window at least one token of its own (and its BOS)."""
    if long_documents == "windows" and fmt != "text":
        raise ValueError(f"long_documents windows is for format text; a {fmt} conversation keeps its turn-dropping "
                         "truncation (use long_documents truncate)")
    if window_context and long_documents != "windows":
        raise ValueError("window_context is read only with long_documents windows")
    if window_context > max_tokens - 2:
        raise ValueError(f"window_context {window_context} leaves no room in a window of max_tokens {max_tokens}: "
                         "it must be at most max_tokens - 2")
