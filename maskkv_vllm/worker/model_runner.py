"""The model runner: batched denoising steps over a LLaDA model, with the prompt
KV cache modes (the engine's scheduler decides which sequences step)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from maskkv_vllm.config import CacheConfig, MaskKVConfig
from maskkv_vllm.eviction.evictor import Eviction
from maskkv_vllm.eviction.policy_set import PolicySet
from maskkv_vllm.eviction.registry import check_budget
from maskkv_vllm.kv_cache.canvas_cache import canvas_span
from maskkv_vllm.kv_cache.factory import make_prompt_cache
from maskkv_vllm.kv_cache.forward_batch import canvas_batch, full_batch
from maskkv_vllm.kv_cache.prompt_cache import PromptCache
from maskkv_vllm.models.attention import Attention, DenseAttention
from maskkv_vllm.models.continuation import continuation_text
from maskkv_vllm.models.protocol import DiffusionLM
from maskkv_vllm.models.tokenizer import Tokenizer
from maskkv_vllm.sampler.outputs import GenerationOutput
from maskkv_vllm.sampler.sequence import DiffusionSequence
from maskkv_vllm.sampler.step_proposal import block_hidden, propose
from maskkv_vllm.sampler.stops import first_stop, stop_ids
from maskkv_vllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

FORWARD_KINDS = ("full", "canvas", "block", "adaptive")
"""The forwards of a step, in the order they run (``ModelRunner.forward_kind``)."""

Prompt = str | list[int]


class ModelRunner:
    """Runs LLaDA's reverse process: one step for what the engine hands it
    (``step``), or whole prompts standalone (``generate``).

    Args:
        model: a loaded ``DiffusionLM`` (``LLaDAModel``, the BERT testbed, ...).
        tokenizer: its tokenizer (needed for text prompts and output text).
        cache_config: how the prompt KV is kept between steps.
        max_model_len: longest prompt + canvas accepted; default is the model's
            ``max_sequence_length`` times its ``rope_scaling``.
        max_num_seqs: sequences denoised together in one forward batch.
        maskkv_config: hyper-parameters of the eviction policies (and the path of
            the layer profile, validated against the model here).
        early_stop: finish a request after the block holding its first stop token
            (the output is the same; later blocks are not computed).
        prompt_cache, policies: an engine's own (it owns the pool and admits by
            it); by default the sampler builds them from ``cache_config`` and
            ``maskkv_config`` (standalone use, ``generate``).
    """

    def __init__(
        self,
        model: DiffusionLM,
        tokenizer: Tokenizer | None = None,
        cache_config: CacheConfig | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int = 8,
        maskkv_config: MaskKVConfig | None = None,
        early_stop: bool = True,
        *,
        prompt_cache: PromptCache | None = None,
        policies: PolicySet | None = None,
    ) -> None:
        self.shift = int(getattr(model.config, "shifted_logits", False))
        """1 for a model that reads slot i from output i - 1 (Dream)."""
        self.model = model
        self.tokenizer = tokenizer
        self.cache_config = cache_config or CacheConfig()
        # The NTK factor stretches the positions the model can use, as vLLM's
        # max_model_len follows the checkpoint's RoPE scaling.
        scaling = getattr(model, "rope_scaling", 1.0)
        trained = model.config.max_sequence_length
        self.max_model_len = max_model_len or int(trained * scaling)
        if self.max_model_len <= 0:
            raise ValueError(f"max_model_len={self.max_model_len} must be positive")
        if max_num_seqs <= 0:
            raise ValueError(f"max_num_seqs={max_num_seqs} must be positive")
        self.max_num_seqs = max_num_seqs
        param = next(model.parameters())
        self.device = param.device
        c = model.config
        if prompt_cache is None:
            prompt_cache = make_prompt_cache(
                self.cache_config,
                c.n_layers,
                c.n_kv_heads,
                c.head_dim,
                param.dtype,
                self.device,
            )
        self.prompt_cache = prompt_cache
        self._uids = itertools.count()
        self.maskkv_config = maskkv_config or MaskKVConfig()
        self.policies = policies or PolicySet(self.maskkv_config, c.n_layers)
        self.profile = self.policies.profile
        self.early_stop = early_stop

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[GenerationOutput]:
        """Denoise every prompt; outputs come back in prompt order."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(
                "prompts must be a non-empty list of str or token-id lists"
            )
        params_list = self._params_list(params, len(prompts))
        seqs = [
            self.make_sequence(i, p, sp)
            for i, (p, sp) in enumerate(zip(prompts, params_list, strict=True))
        ]
        outputs = []
        for start in range(0, len(seqs), self.max_num_seqs):
            wave = seqs[start : start + self.max_num_seqs]
            try:
                self._run_to_completion(wave, use_tqdm)
            finally:
                for s in wave:
                    self.free(s)
            outputs.extend(self.make_output(s) for s in wave)
        return outputs

    def make_sequence(
        self, request_id: int, prompt: Prompt, params: SamplingParams
    ) -> DiffusionSequence:
        """Tokenize and validate one prompt into a fresh sequence (standalone use;
        the engine validates in ``make_request`` and calls ``new_sequence``)."""
        return self.new_sequence(request_id, self.validate(prompt, params), params)

    def new_sequence(
        self, request_id: int, prompt_token_ids: list[int], params: SamplingParams
    ) -> DiffusionSequence:
        """A fresh sequence of prompt ids that ``validate`` returned: a request is
        validated once, where it enters (not again at each (re)start)."""
        cfg = self.model.config
        return DiffusionSequence(
            next(self._uids),
            request_id,
            prompt_token_ids,
            params,
            cfg.mask_token_id,
            cfg.eos_token_id,
            self.device,
            self.stop_token_ids if self.early_stop else (),
        )

    def validate(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """Prompt token ids, or ValueError/TypeError naming what is wrong."""
        room = self.max_model_len - params.gen_length
        if room < 1:
            raise ValueError(
                f"gen_length={params.gen_length} leaves no room for a prompt "
                f"within max_model_len={self.max_model_len}"
            )
        if isinstance(prompt, str) and self.tokenizer is not None:
            # Refuse a huge text before tokenizing it (seconds per MiB).
            fewest = self.tokenizer.fewest_tokens(prompt)
            if fewest > room:
                raise ValueError(
                    f"prompt of at least {fewest} tokens ({len(prompt)} characters) "
                    f"+ gen_length {params.gen_length} exceeds "
                    f"max_model_len={self.max_model_len}"
                )
        ids = self._tokenize(prompt)
        check_budget(params.kv_policy, params.kv_budget)
        if params.canvas_cache == "adaptive" and not self.runs_layers:
            raise ValueError(
                f"canvas_cache='adaptive' needs a model whose layers expose value, "
                f"attn_proj and ffn ({type(self.model).__name__} does not)"
            )
        if params.caches_canvas and not getattr(
            self.prompt_cache, "supports_canvas_cache", False
        ):
            raise ValueError(
                f"canvas_cache={params.canvas_cache!r} needs cache_mode='paged' "
                f"(got {self.cache_config.cache_mode!r})"
            )
        if params.evicts and not getattr(self.prompt_cache, "supports_eviction", False):
            raise ValueError(
                f"kv_policy={params.kv_policy!r} needs cache_mode='paged' "
                f"(got {self.cache_config.cache_mode!r})"
            )
        if len(ids) + params.gen_length > self.max_model_len:
            raise ValueError(
                f"prompt of {len(ids)} tokens + gen_length {params.gen_length} exceeds "
                f"max_model_len={self.max_model_len}"
            )
        return ids

    @property
    def runs_layers(self) -> bool:
        """Whether the model's layers have the pieces ``run_layer`` needs."""
        blocks = getattr(self.model, "blocks", None)
        return blocks is not None and all(
            hasattr(b, name)
            for b in blocks
            for name in ("value", "attn_proj", "ffn", "qkv", "layer")
        )

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        c = self.model.config
        return c.n_heads // c.n_kv_heads

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        own = self.tokenizer.stop_token_ids if self.tokenizer else ()
        return stop_ids(own, [self.model.config.eos_token_id])

    def free(self, seq: DiffusionSequence) -> None:
        """Drop a sequence's prompt KV (finished, failed or cancelled); idempotent."""
        if self.prompt_cache is not None:
            for key in seq.cache_keys:
                self.prompt_cache.free(key)

    @torch.inference_mode()
    def step(self, seqs: list[DiffusionSequence]) -> None:
        """Run one denoising step for every unfinished sequence: one forward per
        kind of step (``forward_kind``) among them."""
        # Kinds are decided before any forward runs: a first forward makes its
        # sequences "canvas" ones, which must wait for the next step.
        kinds = [(s, self.forward_kind(s)) for s in seqs if not s.is_finished]
        for kind in FORWARD_KINDS:
            group = [s for s, k in kinds if k == kind]
            if group:
                self._forward_and_commit(group, kind)

    def forward_kind(self, seq: DiffusionSequence) -> str:
        """ "full": prompt and canvas (step 0, a prompt refresh, no cache);
        "canvas": the whole canvas over the cached prompt KV; "block": only the
        current diffusion block, over the cached prompt and canvas KV (the dual
        canvas cache, inside a block); "adaptive": the whole canvas, each layer
        recomputing only some rows (the adaptive canvas cache)."""
        if self.needs_full_forward(seq):
            return "full"
        if seq.params.canvas_cache == "adaptive":
            return "adaptive"
        if seq.in_block_step:
            return "block"
        return "canvas"

    def make_output(self, seq: DiffusionSequence) -> GenerationOutput:
        ids = seq.canvas.tolist()
        cut = first_stop(ids, self.stop_token_ids)
        token_ids = ids if cut is None else ids[:cut]
        text = (
            continuation_text(self.tokenizer.decode, seq.prompt_token_ids, token_ids)
            if self.tokenizer
            else ""
        )
        return GenerationOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=token_ids,
            text=text,
            finish_reason="length" if cut is None else "stop",
            num_steps=seq.num_steps,
            prompt_kv_bytes=seq.peak_prompt_kv_bytes,
            prompt_kv_entries=seq.prompt_kv_entries,
        )

    def _run_to_completion(self, seqs: list[DiffusionSequence], use_tqdm: bool) -> None:
        total = max(s.params.steps for s in seqs)
        with tqdm(total=total, disable=not use_tqdm, desc="denoising steps") as bar:
            while not all(s.is_finished for s in seqs):
                self.step(seqs)
                bar.update(1)

    def needs_full_forward(self, seq: DiffusionSequence) -> bool:
        """Whether this step recomputes (and re-stores) the sequence's prompt KV."""
        if self.cache_config.cache_mode == "none":
            return True
        if not self.prompt_cache.has(seq.cache_keys[0]) or seq.prompt_refresh_due:
            return True
        interval = self.cache_config.prompt_refresh_interval
        return interval is not None and seq.num_steps % interval == 0

    def _forward_and_commit(self, seqs: list[DiffusionSequence], kind: str):
        rows = [(s, br) for s in seqs for br in s.branches]
        keys = [br.cache_key for _, br in rows]
        spans = [canvas_span(s.params, s.block_start, self.group) for s, _ in rows]
        pad = self.model.config.pad_token_id
        if kind == "full":
            canvases = [s.canvas for s, _ in rows]
            batch = full_batch([br.prompt_ids for _, br in rows], canvases, pad)
            attn, first = self._full_attention(rows, keys, batch, spans), 0
        else:
            batch = canvas_batch(*self._cached_rows(kind, rows), pad)
            if self.shift:  # column 0: the position before the span, a query only
                batch.key_mask[:, 0] = False
            first = self.shift
            if kind == "canvas":
                cached = [spans] if any(spans) else []
                attn = self.prompt_cache.cached_attention(keys, batch.key_mask, *cached)
            elif kind == "adaptive":
                attn = self._adaptive_attention(rows, keys)
            else:
                attn = self.prompt_cache.block_attention(keys, batch.key_mask)
        hidden = self.model(batch.input_ids, batch.positions, attn)
        if kind == "full" and self.prompt_cache is not None:
            cache = self.prompt_cache
            for s in seqs:
                s.prompt_kv_entries = sum(cache.num_entries(k) for k in s.cache_keys)
                s.prompt_kv_pages = sum(cache.num_pages(k) for k in s.cache_keys)
        i = 0
        for s in seqs:
            n = len(s.branches)
            start = batch.canvas_start + first
            start -= s.block_start if kind == "block" else 0
            branches = [
                block_hidden(h, start, s, self.shift) for h in hidden[i : i + n]
            ]
            s.apply_step(*propose(s, branches, self.model.logits))
            s.note_forward(kind)
            i += n
            self._after_step(s)

    def _adaptive_attention(self, rows, keys):
        """Rows of the adaptive canvas cache (``canvas_rows_recomputed``)."""
        lens = [s.params.gen_length for s, _ in rows]
        selected = [s.canvas_rows_recomputed for s, _ in rows]
        return self.prompt_cache.adaptive_attention(keys, lens, selected, self.shift)

    def _cached_rows(self, kind: str, rows) -> tuple[list[int], list[torch.Tensor]]:
        """First positions and tokens of a canvas-only forward: the canvas, or
        the current block ("block"); for a shifted model (Dream) preceded by the
        position before it, whose output reads the span's first slot."""
        starts, tokens = [], []
        for s, br in rows:
            lo = s.block_start if kind == "block" else 0
            if kind == "block":
                span = s.canvas[lo : lo + s.params.block_length]
            else:
                span = s.canvas
            start = s.prompt_len + lo
            if self.shift:
                prev = s.canvas[lo - 1 : lo] if lo else br.prompt_ids[-1:]
                span, start = torch.cat([prev, span]), start - 1
            starts.append(start)
            tokens.append(span)
        return starts, tokens

    def _after_step(self, seq: DiffusionSequence) -> None:
        if self.prompt_cache is None:
            return
        held = sum(self.prompt_cache.nbytes(k) for k in seq.cache_keys)
        seq.peak_prompt_kv_bytes = max(seq.peak_prompt_kv_bytes, held)
        if seq.is_finished:
            self.free(seq)

    def _full_attention(self, rows, keys, batch, spans) -> Attention:
        if self.prompt_cache is None:
            mask = None if bool(batch.key_mask.all()) else batch.key_mask
            return DenseAttention(mask)
        evictions = [self._eviction(s) for s, _ in rows]
        cached = [spans] if any(spans) else []
        return self.prompt_cache.capturing_attention(keys, batch, evictions, *cached)

    def _eviction(self, seq: DiffusionSequence) -> Eviction | None:
        p = seq.params
        return self.policies.eviction(p.kv_policy, p.kv_budget, seq.generator)

    def _tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "text prompts need a tokenizer; pass token ids instead"
                )
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, list | tuple) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids = list(prompt)
        else:
            raise TypeError(
                f"prompt must be a str or a list of ints, got {prompt!r:.80}"
            )
        if not ids:
            raise ValueError("prompt is empty (0 tokens)")
        size = self.model.config.embedding_size
        bad = [t for t in ids if not 0 <= t < size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside [0, {size})")
        return ids

    @staticmethod
    def _params_list(
        params: SamplingParams | Sequence[SamplingParams] | None, n: int
    ) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
        for p in params:
            if not isinstance(p, SamplingParams):
                raise TypeError(f"expected SamplingParams, got {type(p).__name__}")
        return params
