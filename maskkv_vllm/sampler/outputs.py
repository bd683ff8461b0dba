"""What a finished request returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationOutput:
    """Result of one request."""

    request_id: int
    """Index of the prompt in the call."""
    prompt_token_ids: list[int]
    """The prompt as tokenized."""
    token_ids: list[int]
    """Generated ids up to (not including) the first EOS/EOT."""
    text: str
    """Decoded ``token_ids``."""
    finish_reason: str
    """"stop" if the canvas holds an EOS/EOT, "length" if the answer filled it."""
    num_steps: int
    """Denoising steps run."""
    prompt_kv_bytes: int
    """Peak bytes of prompt KV this request held (0 with cache_mode "none")."""
    prompt_kv_entries: int = 0
    """Prompt (layer, KV head, token) entries kept after the first step."""
