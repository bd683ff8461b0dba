"""The engine loop over a scheduler and a model runner: the scheduler admits,
reserves and preempts by pages; the model runner (``worker.model_runner``)
denoises every running request one step per iteration in one batched forward;
the loop turns committed blocks into outputs and confines a failure to its
request."""

from __future__ import annotations

import itertools
import logging
import time

from maskkv_vllm.config import EngineConfig
from maskkv_vllm.engine.kv_cache_manager import KVCacheManager
from maskkv_vllm.engine.metrics import EngineMetrics
from maskkv_vllm.engine.request import (
    Request,
    RequestOutput,
    RequestStatus,
)
from maskkv_vllm.engine.scheduler import Scheduler
from maskkv_vllm.eviction.policy_set import PolicySet
from maskkv_vllm.kv_cache.factory import make_prompt_cache
from maskkv_vllm.models.builtin import resolve_model
from maskkv_vllm.models.continuation import continuation_text
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tokenizer import Tokenizer
from maskkv_vllm.paging.page_pool import NoFreePagesError
from maskkv_vllm.sampler.stops import first_stop
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner, Prompt

logger = logging.getLogger(__name__)


class LLMEngine:
    """Continuous batching of diffusion requests over one model and one page pool.

    Args:
        config: engine configuration.
        model, tokenizer: an already loaded model (else loaded from ``config.model``).
    """

    def __init__(
        self,
        config: EngineConfig,
        model: LLaDAModel | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.config = config
        if model is None:
            model, tokenizer = load_checkpoint(
                resolve_model(config.model),
                config.dtype,
                config.device,
                config.rope_scaling,
            )
        self.model, self.tokenizer = model, tokenizer
        _check_max_model_len(config, model.config.max_sequence_length)
        c, param = model.config, next(model.parameters())
        # The scheduler admits and preempts by the cache's pages (through the
        # KVCacheManager) and reserves by the policies' budgets; the runner runs
        # the model over the same cache and policies.
        self.kv_cache = make_prompt_cache(
            config.cache, c.n_layers, c.n_kv_heads, c.head_dim, param.dtype,
            param.device,
        )  # fmt: skip
        self.policies = PolicySet(config.maskkv, c.n_layers)
        self.model_runner = ModelRunner(
            model,
            tokenizer,
            config.cache,
            config.max_model_len,
            config.max_num_seqs,
            config.maskkv,
            prompt_cache=self.kv_cache,
            policies=self.policies,
        )
        self.kv_cache_manager = KVCacheManager(
            self.kv_cache, self.policies, c.n_layers, c.n_kv_heads,
            c.n_heads // c.n_kv_heads,
        )  # fmt: skip
        self.metrics = EngineMetrics()
        self.scheduler = Scheduler(
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.max_queue_len,
            self.kv_cache_manager,
            self.metrics,
        )
        self._ids = itertools.count()
        self._ids_in_use: set[str] = set()

    # -- requests ----------------------------------------------------------------

    def make_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> Request:
        """Tokenize and validate; raises ValueError/TypeError on bad input.

        Safe to call from any thread (it touches no engine state).
        """
        params = (params or SamplingParams()).with_kv_defaults(
            self.config.kv_policy, self.config.kv_budget, self.config.canvas_cache
        )
        ids = self.model_runner.validate(prompt, params)
        request_id = request_id or f"req-{next(self._ids)}"
        kv = self.kv_cache_manager
        fewest, pool = kv.fewest_pages(params, len(ids)), kv.pool
        if pool is not None and fewest > pool.num_usable_pages:
            raise ValueError(
                f"a {len(ids)}-token prompt needs {fewest} KV pages but the pool "
                f"holds {pool.num_usable_pages}: raise kv_cache_memory or lower "
                "kv_budget"
            )
        predicted = kv.reserved_pages(params, len(ids))
        return Request(request_id, ids, params, predicted)

    def add_request(self, request: Request) -> None:
        if request.request_id in self._ids_in_use:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        if not self.scheduler.can_add():
            raise QueueFullError(
                f"{len(self.scheduler.waiting)} requests are waiting (max_queue_len)"
            )
        self._ids_in_use.add(request.request_id)
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request and give its pages back; None if it is not in flight."""
        request = self.scheduler.find(request_id)
        if request is None:
            return None
        self.metrics.num_requests_aborted += 1
        return self._finish(request, RequestStatus.FINISHED_ABORTED)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def fail_all(self, message: str) -> list[RequestOutput]:
        """End every request with an error (after an unexpected engine failure)."""
        return [
            self._fail(r, message)
            for r in [*self.scheduler.running, *self.scheduler.waiting]
        ]

    # -- the loop ----------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One denoising step for every running request; outputs of the requests
        that committed a block or finished."""
        start = time.perf_counter()
        admitted = self.scheduler.schedule()
        failed = [out for r in admitted if (out := self._start(r))]
        prefilling = [
            r for r in self.scheduler.running
            if self.model_runner.needs_full_forward(r.seq)
        ]  # fmt: skip
        self.scheduler.reserve(prefilling)
        running = list(self.scheduler.running)
        if not running:
            return failed
        prefilling = [r for r in prefilling if r in running]
        steps_before = [r.seq.num_steps for r in running]
        try:
            self.model_runner.step([r.seq for r in running])
        except NoFreePagesError as e:
            return failed + self._out_of_pages(prefilling, e)
        except Exception as e:  # noqa: BLE001 (find the request that fails)
            return failed + self._isolate(running, prefilling, steps_before, e)
        outputs = [out for r in running if (out := self._progress(r, r in prefilling))]
        self.metrics.record_step(time.perf_counter() - start, bool(prefilling))
        return failed + outputs

    def _start(self, r: Request) -> RequestOutput | None:
        """Give a just-admitted request its sequence; its output if that fails."""
        try:
            # make_request validated the prompt: the sequence is built as is.
            r.seq = self.model_runner.new_sequence(0, r.prompt_token_ids, r.params)
            # A restarted request keeps the blocks its client already has.
            r.seq.pin(r.token_ids_so_far)
        except Exception as e:  # noqa: BLE001 (one request's failure is its own)
            logger.exception("request %s failed to start", r.request_id)
            return self._fail(r, f"request failed to start: {e}")
        return None

    def _isolate(
        self,
        running: list[Request],
        prefilling: list[Request],
        steps_before: list[int],
        error: Exception,
    ) -> list[RequestOutput]:
        """The batched step raised: step every request that did not advance on its
        own, so that a failure ends only the request that causes it."""
        logger.warning("batched step failed (%s); retrying one by one", error)
        outputs = []
        for r, before in zip(running, steps_before, strict=True):
            first = r in prefilling
            if r.seq.num_steps == before:
                if first:  # its prefill may have written part of its pages
                    self.kv_cache_manager.free(r)
                    if (out := self._start(r)) is not None:
                        outputs.append(out)
                        continue
                try:
                    self.model_runner.step([r.seq])
                except NoFreePagesError:
                    self.scheduler.preempt([r])
                    continue
                except Exception as e:  # noqa: BLE001
                    logger.exception("request %s failed", r.request_id)
                    outputs.append(self._fail(r, f"generation failed: {e}"))
                    continue
            if (out := self._progress(r, first)) is not None:
                outputs.append(out)
        return outputs

    def _fail(self, r: Request, message: str) -> RequestOutput:
        r.error = message
        self.metrics.num_requests_failed += 1
        return self._finish(r, RequestStatus.FINISHED_ERROR)

    def _out_of_pages(
        self, prefilling: list[Request], error: Exception
    ) -> list[RequestOutput]:
        """A step's first forwards ran out of pages: the scheduler preempts (to
        retry next step), or hands back a request that cannot fit even alone."""
        r = self.scheduler.recover(prefilling)
        if r is None:
            return []
        r.error_is_request = True
        message = (
            f"a {len(r.prompt_token_ids)}-token prompt does not fit in the KV "
            f"pool even alone: {error}"
        )
        return [self._fail(r, message)]

    def _progress(self, r: Request, first_step: bool) -> RequestOutput | None:
        seq = r.seq
        if first_step:
            self._record_kv(r)
        done = seq.is_finished
        committed = seq.num_committed_tokens
        if not done and committed <= len(r.token_ids_so_far):
            return None  # nothing new (a restarted request replays pinned blocks)
        if not done:
            r.token_ids_so_far = seq.canvas[:committed].tolist()
        if r.stats.time_to_first_block is None and committed:
            r.stats.time_to_first_block = time.monotonic() - r.arrival_time
        if done:
            out = self.model_runner.make_output(seq)
            status = (
                RequestStatus.FINISHED_STOPPED
                if out.finish_reason == "stop"
                else RequestStatus.FINISHED_LENGTH
            )
            r.stats.num_steps = seq.num_steps
            self.metrics.num_requests_finished += 1
            self.metrics.generated_tokens += len(out.token_ids)
            return self._finish(r, status, out.token_ids)
        return self._output(r, *self._partial(r))

    def _partial(self, r: Request) -> tuple[list[int], str]:
        ids = r.token_ids_so_far
        cut = first_stop(ids, self.model_runner.stop_token_ids)
        cut = len(ids) if cut is None else cut
        text = self._decode(r, ids[:cut])
        # A multi-byte character split across blocks decodes as U+FFFD for now.
        return ids[:cut], text.rstrip("\ufffd")

    def _record_kv(self, r: Request) -> None:
        # The runner counted the rows' entries and pages at the forward: a
        # request that finished in its first step has freed them by now.
        kv = self.kv_cache_manager
        if kv.prompt_cache is None:
            return
        kept = r.seq.prompt_kv_entries
        r.stats.kept_kv_entries = kept
        evicted = max(kv.full_entries(r) - kept, 0) if r.params.evicts else 0
        r.stats.evicted_kv_entries = evicted
        self.metrics.evicted_kv_entries += evicted
        r.stats.num_pages = r.seq.prompt_kv_pages

    # -- outputs -----------------------------------------------------------------

    def _output(
        self, r: Request, token_ids: list[int], text: str, finished: bool = False
    ) -> RequestOutput:
        if text.startswith(r.emitted_text):
            delta, r.emitted_text = text[len(r.emitted_text) :], text
        elif r.emitted_text.startswith(text):
            delta = ""  # what was sent stays sent
        else:
            delta, r.emitted_text = text, text
        return RequestOutput(
            request_id=r.request_id,
            prompt_token_ids=r.prompt_token_ids,
            text=text,
            token_ids=token_ids,
            delta_text=delta,
            finished=finished,
            finish_reason=r.status.value if finished else None,
            stats=r.stats,
            error=r.error,
            error_is_request=r.error_is_request,
        )

    def _finish(
        self, r: Request, status: RequestStatus, token_ids: list[int] | None = None
    ) -> RequestOutput:
        self.scheduler.finish(r, status)
        self._ids_in_use.discard(r.request_id)
        r.stats.prompt_tokens = len(r.prompt_token_ids)
        r.stats.total_time = time.monotonic() - r.arrival_time
        if token_ids is None:  # aborted or failed: what was streamed so far
            token_ids, text = [], r.emitted_text
        else:
            text = self._decode(r, token_ids)
        return self._output(r, token_ids, text, finished=True)

    def _decode(self, r: Request, ids: list[int]) -> str:
        """The answer's text as it reads after the prompt (as vLLM gives it)."""
        if not self.tokenizer:
            return ""
        return continuation_text(self.tokenizer.decode, r.prompt_token_ids, ids)

    def summary(self) -> str:
        """One line on what this engine serves with (logged at startup)."""
        c, cfg = self.model.config, self.config
        param = next(self.model.parameters())
        pool = "no page pool"
        st = self.pool_stats()
        if st is not None:
            total = st["num_pages"] * st["bytes_per_page"]
            pool = (
                f"{st['num_pages']} KV pages of {st['page_size']} slots "
                f"({total / 2**20:.1f} MiB)"
            )
        budget = f" B={cfg.kv_budget}" if cfg.kv_budget is not None else ""
        return (
            f"model {cfg.model} ({c.n_layers} layers x {c.n_kv_heads} KV heads x "
            f"{c.head_dim}), {param.dtype} on {param.device}, {pool}, "
            f"max_model_len {self.model_runner.max_model_len}, default policy "
            f"{cfg.kv_policy}{budget}, max_num_seqs {cfg.max_num_seqs}"
        )

    def pool_stats(self) -> dict | None:
        """Pages, page bytes, peak and free pages; None without a page pool."""
        return self.kv_cache.pool_stats() if self.kv_cache is not None else None


def _check_max_model_len(config: EngineConfig, trained: int) -> None:
    """Positions beyond the trained length (times the NTK factor) are untrained."""
    limit = int(trained * config.rope_scaling)
    if config.max_model_len is not None and config.max_model_len > limit:
        raise ValueError(
            f"max_model_len={config.max_model_len} exceeds the checkpoint's "
            f"max_sequence_length={trained} x rope_scaling={config.rope_scaling} "
            f"= {limit}: lower it, or raise rope_scaling (NTK) to "
            f"{config.max_model_len / trained:.2f} or more"
        )


class QueueFullError(RuntimeError):
    """The waiting queue is at max_queue_len."""
