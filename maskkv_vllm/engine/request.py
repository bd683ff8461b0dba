"""A request's lifecycle in the engine and what it reports."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from maskkv_vllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def is_finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


@dataclass
class RequestStats:
    """What one request cost."""

    prompt_tokens: int = 0
    """Prompt length M."""
    kept_kv_entries: int = 0
    """Prompt (layer, KV head, token) entries kept after the first step."""
    evicted_kv_entries: int = 0
    """Prompt entries the eviction policy dropped."""
    num_pages: int = 0
    """KV pages held after the first step."""
    num_steps: int = 0
    """Denoising steps run (the last, completed attempt)."""
    num_preemptions: int = 0
    """Times the request was preempted and recomputed."""
    time_to_first_block: float | None = None
    """Seconds from arrival to the first committed block."""
    total_time: float | None = None
    """Seconds from arrival to the end."""


@dataclass
class RequestOutput:
    """The state of a request after an engine step (streamed) or at its end."""

    request_id: str
    prompt_token_ids: list[int]
    text: str
    """Answer so far: the completed blocks, cut at the first stop token."""
    token_ids: list[int]
    delta_text: str
    """Text added since the previous output of this request."""
    finished: bool
    finish_reason: str | None
    """"stop", "length", "abort" or "error" once finished."""
    stats: RequestStats
    error: str | None = None
    error_is_request: bool = False
    """The request itself cannot be served (a client error), not an engine fault."""


@dataclass
class Request:
    """Engine-side state of one request.

    ``predicted_pages`` is what admission reserves: the request's prompt pages after
    eviction, predicted from its policy and budget (the pool never holds more of a
    prompt, since evicted entries are never written to it).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    predicted_pages: int
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    seq: object | None = None
    """The ``DiffusionSequence`` while running; None while waiting."""
    stats: RequestStats = field(default_factory=RequestStats)
    token_ids_so_far: list[int] = field(default_factory=list)
    """Canvas tokens of the completed blocks, as last reported (a restart pins them)."""
    emitted_text: str = ""
    error: str | None = None
    error_is_request: bool = False

    @property
    def step_tokens(self) -> int:
        """Tokens of one denoising step once prefilled (the canvas rows). With
        the dual canvas cache most steps forward only the block's rows, but a
        block boundary forwards the canvas: admission counts the most a step
        takes, since running requests are not throttled per step."""
        return self.params.num_rows * self.params.gen_length

    @property
    def prefill_tokens(self) -> int:
        """Tokens of the first step (prompt and canvas rows)."""
        rows = self.params.num_rows
        return rows * (len(self.prompt_token_ids) + self.params.gen_length)
