"""The engine loop: admit by free pages, reserve what this step's forwards may take
(preempting the newest request when they would run short), denoise every running
request one step per iteration in one batched forward, stream completed blocks."""

from __future__ import annotations

import itertools
import logging
import time

from maskkv_vllm.config import EngineConfig
from maskkv_vllm.engine.metrics import EngineMetrics
from maskkv_vllm.engine.request import (
    Request,
    RequestOutput,
    RequestStatus,
)
from maskkv_vllm.engine.scheduler import Scheduler
from maskkv_vllm.eviction.budget import fewest_pages, reserved_pages
from maskkv_vllm.eviction.policy_set import PolicySet
from maskkv_vllm.kv_cache.factory import make_prompt_cache
from maskkv_vllm.models.builtin import resolve_model
from maskkv_vllm.models.continuation import continuation_text
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tokenizer import Tokenizer
from maskkv_vllm.paging.block_pool import NoFreeBlocksError
from maskkv_vllm.sampler.diffusion_sampler import DiffusionSampler, Prompt
from maskkv_vllm.sampler.stops import first_stop
from maskkv_vllm.sampling_params import SamplingParams

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
        # The engine owns the pool (it admits and preempts by it) and the policies
        # (it reserves by their budgets); the sampler runs the model over them.
        self.kv_cache = make_prompt_cache(
            config.cache, c.n_layers, c.n_kv_heads, c.head_dim, param.dtype,
            param.device,
        )  # fmt: skip
        self.policies = PolicySet(config.maskkv, c.n_layers)
        self.sampler = DiffusionSampler(
            model,
            tokenizer,
            config.cache,
            config.max_model_len,
            config.max_num_seqs,
            config.maskkv,
            prompt_cache=self.kv_cache,
            policies=self.policies,
        )
        self.scheduler = Scheduler(
            config.max_num_seqs, config.max_num_batched_tokens, config.max_queue_len
        )
        self.metrics = EngineMetrics()
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
            self.config.kv_policy, self.config.kv_budget
        )
        ids = self.sampler.validate(prompt, params)
        request_id = request_id or f"req-{next(self._ids)}"
        fewest = self._fewest_pages(params, len(ids))
        pool = self.pool
        if pool is not None and fewest > pool.num_usable_blocks:
            raise ValueError(
                f"a {len(ids)}-token prompt needs {fewest} KV pages but the pool "
                f"holds {pool.num_usable_blocks}: raise kv_cache_memory or lower "
                "kv_budget"
            )
        predicted = self.predict_pages(params, len(ids))
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
        self._release(request)
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
        failed = [
            out
            for r in self.scheduler.schedule(self.num_free_pages)
            if (out := self._start(r))
        ]
        running = list(self.scheduler.running)
        if not running:
            return failed
        prefilling = [r for r in running if self.sampler.needs_full_forward(r.seq)]
        if self._reserve(prefilling):
            running = list(self.scheduler.running)
            prefilling = [r for r in prefilling if r in running]
        steps_before = [r.seq.num_steps for r in running]
        try:
            self.sampler.step([r.seq for r in running])
        except NoFreeBlocksError as e:
            return failed + self._recover(prefilling, running, e)
        except Exception as e:  # noqa: BLE001 (find the request that fails)
            return failed + self._isolate(running, prefilling, steps_before, e)
        outputs = [out for r in running if (out := self._progress(r, r in prefilling))]
        self.metrics.record_step(time.perf_counter() - start)
        return failed + outputs

    def _start(self, r: Request) -> RequestOutput | None:
        """Give a just-admitted request its sequence; its output if that fails."""
        try:
            # make_request validated the prompt: the sequence is built as is.
            r.seq = self.sampler.new_sequence(0, r.prompt_token_ids, r.params)
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
                    self._release(r)
                    if (out := self._start(r)) is not None:
                        outputs.append(out)
                        continue
                try:
                    self.sampler.step([r.seq])
                except NoFreeBlocksError:
                    self._release(r)
                    self.metrics.num_preemptions += 1
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
        self._release(r)
        r.error = message
        self.metrics.num_requests_failed += 1
        return self._finish(r, RequestStatus.FINISHED_ERROR)

    def _recover(
        self, prefilling: list[Request], running: list[Request], error: Exception
    ) -> list[RequestOutput]:
        """A first step ran out of pages although ``_reserve`` made room (a page
        count that was predicted wrong): undo the prefills, preempt the newest
        other request, and retry next step with the bound reserved."""
        for r in prefilling:
            self._release(r)
            r.predicted_pages = self.predict_pages(r.params, len(r.prompt_token_ids))
        others = [r for r in running if r not in prefilling]
        if not others and len(prefilling) == 1:
            (r,) = prefilling
            r.error_is_request = True
            message = (
                f"a {len(r.prompt_token_ids)}-token prompt does not fit in the KV "
                f"pool even alone: {error}"
            )
            return [self._fail(r, message)]
        victims = list(prefilling)
        newest = self.scheduler.newest_running(exclude=prefilling)
        if newest is not None:
            self._release(newest)
            victims.append(newest)
        logger.info("out of KV pages: preempting %d requests", len(victims))
        self.metrics.num_preemptions += len(victims)
        self.scheduler.preempt(victims)
        return []

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
            out = self.sampler.make_output(seq)
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
        cut = first_stop(ids, self.sampler.stop_token_ids)
        cut = len(ids) if cut is None else cut
        text = self._decode(r, ids[:cut])
        # A multi-byte character split across blocks decodes as U+FFFD for now.
        return ids[:cut], text.rstrip("\ufffd")

    def _record_kv(self, r: Request) -> None:
        cache = self.kv_cache
        if cache is None:
            return
        c = self.model.config
        kept = sum(cache.num_entries(k) for k in r.seq.cache_keys)
        full = r.params.num_rows * c.n_layers * c.n_kv_heads * len(r.prompt_token_ids)
        r.stats.kept_kv_entries = kept
        r.stats.evicted_kv_entries = max(full - kept, 0) if r.params.evicts else 0
        self.metrics.evicted_kv_entries += r.stats.evicted_kv_entries
        r.stats.num_pages = sum(cache.num_pages(k) for k in r.seq.cache_keys)

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
        r.seq = None
        return self._output(r, token_ids, text, finished=True)

    def _release(self, r: Request) -> None:
        """Give a request's pages back and drop its sequence. A preempted request
        restarts from its prompt with the blocks already streamed pinned, so the
        text its client has stays the text it gets."""
        if r.seq is not None:
            self.sampler.free(r.seq)
            r.seq = None

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
            total = st["num_blocks"] * st["bytes_per_block"]
            pool = (
                f"{st['num_blocks']} KV pages of {st['block_size']} slots "
                f"({total / 2**20:.1f} MiB)"
            )
        budget = f" B={cfg.kv_budget}" if cfg.kv_budget is not None else ""
        return (
            f"model {cfg.model} ({c.n_layers} layers x {c.n_kv_heads} KV heads x "
            f"{c.head_dim}), {param.dtype} on {param.device}, {pool}, "
            f"max_model_len {self.sampler.max_model_len}, default policy "
            f"{cfg.kv_policy}{budget}, max_num_seqs {cfg.max_num_seqs}"
        )

    # -- pages -------------------------------------------------------------------

    @property
    def pool(self):
        """The page pool admission counts (None without a paged cache)."""
        return self.kv_cache.page_pool if self.kv_cache is not None else None

    def pool_stats(self) -> dict | None:
        """Pages, page bytes, peak and free pages; None without a page pool."""
        return self.kv_cache.pool_stats() if self.kv_cache is not None else None

    @property
    def num_free_pages(self) -> int:
        pool = self.pool
        return pool.num_free_blocks if pool is not None else 1 << 62

    def predict_pages(self, params: SamplingParams, prompt_len: int) -> int:
        """Pages a request's prompt KV may take in its first step, whatever the
        head split (``reserved_pages`` over its policy's per-layer budgets, per
        forward row), capped at the pool: admission and ``_reserve`` count by it.
        A bound above the pool would keep the request (and, FCFS, everyone
        behind it) waiting forever; with the pool to itself it runs or fails.
        """
        pool = self.pool
        if pool is None:
            return 0
        rows, budgets = self._kept(params, prompt_len)
        bound = reserved_pages(
            budgets, prompt_len, self.model.config.n_kv_heads, pool.block_size
        )
        return min(rows * bound, pool.num_usable_blocks)

    def _fewest_pages(self, params: SamplingParams, prompt_len: int) -> int:
        """The least a request's prompt KV can take (``fewest_pages``), uncapped."""
        pool = self.pool
        if pool is None:
            return 0
        rows, budgets = self._kept(params, prompt_len)
        n = self.model.config.n_kv_heads
        return rows * fewest_pages(budgets, prompt_len, n, pool.block_size)

    def _kept(self, params: SamplingParams, prompt_len: int) -> tuple[int, list[int]]:
        """Forward rows of a request (2 with CFG) and the per-head entries each
        layer may keep."""
        policy = self.policies.get(params.kv_policy)
        n_layers = self.model.config.n_layers
        budgets = policy.kept_per_layer(n_layers, params.kv_budget, prompt_len)
        return params.num_rows, budgets

    def _reserve(self, full_forwards: list[Request]) -> bool:
        """Make room before the forward, so no page runs short inside it: the pages
        this step's full forwards may take beyond what they hold must be free.
        Preempts the newest running requests until they are; True if any was.

        Admission already counted a prefill's bound; a refresh (re-voting every
        ``prompt_refresh_interval`` steps) may need more pages than it holds.
        """
        if self.pool is None:
            return False
        preempted = False
        while len(self.scheduler.running) > 1:
            need = sum(
                max(0, r.predicted_pages - self._held_pages(r))
                for r in full_forwards
                if r in self.scheduler.running
            )
            if need <= self.pool.num_free_blocks:
                break
            victim = self.scheduler.newest_running(exclude=[])
            logger.info("reserving KV pages: preempting %s", victim.request_id)
            self._release(victim)
            self.metrics.num_preemptions += 1
            self.scheduler.preempt([victim])
            preempted = True
        return preempted

    def _held_pages(self, r: Request) -> int:
        return sum(self.kv_cache.num_pages(k) for k in r.seq.cache_keys)


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
