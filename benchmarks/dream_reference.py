"""Our Dream sampler against Dream's own ``_sample`` (as vendored in a Fast-dLLM
checkout), on tiny random Dream checkpoints: the same model, temperature 0, the
whole canvas each step, every confidence rule, and ``origin``, ``top_p``,
``top_k`` and ``alg_temp``. Their draws (``origin``'s uniforms, ``alg_temp``'s
multinomial) come from torch's global generator, seeded with the request's seed
before their run; ours from the request's generator with that seed.

Their loop may write ``[MASK]`` back into a slot (ours never proposes it), so
their run gets a logits hook that forbids ``[MASK]``, which is the one
documented difference. Answers are compared up to our first stop token (ours
are cut there). Needs transformers (their module imports it):

    python benchmarks/dream_reference.py --fast-dllm /path/to/Fast-dLLM
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import tempfile
import types
from pathlib import Path

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint
from maskkv_vllm.sampler.dream_rules import CONFIDENCE_RULES
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

PROMPTS = ([5, 17, 99, 3, 42, 8], [200, 7], list(range(30, 60)))
SHAPES = ((8, 8), (12, 4), (16, 5), (32, 32))
OPTIONS = (
    {},
    {"top_p": 0.5},
    {"top_k": 3},
    {"top_p": 0.4, "top_k": 5},
    {"alg_temp": 0.1},
    {"alg_temp": 1.0, "top_p": 0.9},
)
"""Per rule (``alg_temp`` only for the confidence rules), at seeds 0 and 1."""


def their_sampler(checkout: Path):
    path = checkout / "dream" / "model" / "generation_utils.py"
    spec = importlib.util.spec_from_file_location("dream_generation_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Wrapped:
    """Their loop calls ``model(x, attention_mask, tok_idx).logits`` (unshifted)."""

    device = torch.device("cpu")

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x, attention_mask=None, tok_idx=None):
        pos = torch.arange(x.shape[1])[None]
        return types.SimpleNamespace(logits=self.model.logits(self.model(x, pos)))


class BlockWrapped(Wrapped):
    """Their block-wise loop (``generation_utils_block``) with its dual cache:
    a full forward at each block's start, then forwards of the block's rows
    over the cached K/V of the rest. On a one-layer model the cached K/V of the
    positions outside the block are what a full forward gives (their tokens
    have not changed since the block's start), so each block step runs the full
    sequence with the block replaced and returns the block's rows. ``[MASK]``
    is forbidden in the logits (their block loop has no logits hook)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        if model.config.n_layers != 1:
            raise ValueError("the cache-free dual cache is exact on one layer only")
        self.full: torch.Tensor | None = None

    def __call__(self, x, attention_mask=None, tok_idx=None, **cache):
        place = cache.get("replace_position")
        if place is None:
            self.full = x.clone()
            rows = slice(None)
        else:
            self.full[place] = x.reshape(-1)
            rows = place[0].nonzero().squeeze(-1)
        pos = torch.arange(self.full.shape[1])[None]
        logits = self.model.logits(self.model(self.full, pos))[:, rows]
        logits[..., self.model.config.mask_token_id] = -torch.inf
        return types.SimpleNamespace(logits=logits, past_key_values=[])


BLOCK_SHAPES = ((16, 8, 8), (12, 4, 6), (32, 8, 16), (8, 8, 4))
"""(gen, block, steps) of the block-wise variant."""


def their_block_answer(block_utils, model, prompt, shape, opts, draw_seed):
    """Their block-wise ``_sample(dual_cache=True)``'s answer to one prompt."""
    gen, block, steps = shape
    cfg = block_utils.DreamGenerationConfig(
        max_length=len(prompt) + gen, mask_token_id=model.config.mask_token_id,
        steps=steps, alg="entropy", temperature=0.0, top_p=opts.get("top_p"),
        top_k=opts.get("top_k"), alg_temp=opts.get("alg_temp"),
    )  # fmt: skip
    torch.manual_seed(draw_seed)
    with torch.no_grad():
        x = block_utils.DreamGenerationMixin._sample(
            BlockWrapped(model), torch.tensor([prompt]), None, cfg,
            block_length=block, dual_cache=True,
        )  # fmt: skip
    return x[0, len(prompt) :].tolist()


def block_variant(checkout: Path, seeds: list[int]) -> tuple[int, int, int]:
    """Our ``fast_dllm_block`` (cache_mode none, and paged + dual_refresh)
    against their ``generation_utils_block._sample(dual_cache=True)`` on
    one-layer checkpoints: (runs, equal with none, equal with dual_refresh)."""
    path = checkout / "dream" / "model" / "generation_utils_block.py"
    spec = importlib.util.spec_from_file_location("dream_block_utils", path)
    block_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(block_utils)
    runs = same_none = same_dual = 0
    paged = CacheConfig("paged", page_size=4, num_pages=400)
    for seed in seeds:
        ckpt = write_tiny_dream_checkpoint(tempfile.mkdtemp(), seed=seed, n_layers=1)
        model, tok = load_checkpoint(ckpt)
        none = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
        dual = ModelRunner(model, tok, paged, early_stop=False)
        stops = none.stop_token_ids
        cases = [(o, d) for o in OPTIONS for d in ((0, 1) if o else (0,))]
        for (opts, draw_seed), shape, prompt in itertools.product(
            cases, BLOCK_SHAPES, PROMPTS
        ):
            theirs = their_block_answer(block_utils, model, prompt, shape, opts,
                                        draw_seed)  # fmt: skip
            gen, block, steps = shape
            params = SamplingParams(
                gen_length=gen, block_length=block, steps=steps,
                remasking="fast_dllm_block", seed=draw_seed, **opts,
            )  # fmt: skip
            (a,) = none.generate([prompt], params)
            refresh = dataclasses.replace(params, canvas_cache="dual_refresh")
            (b,) = dual.generate([prompt], refresh)
            ok_none = same_answer(theirs, a.token_ids, stops, gen)
            ok_dual = same_answer(theirs, b.token_ids, stops, gen)
            runs, same_none, same_dual = (
                runs + 1,
                same_none + ok_none,
                same_dual + ok_dual,
            )
            if not (ok_none and ok_dual):
                print(f"block differ: seed {seed} {opts} draw seed {draw_seed} "
                      f"shape {shape}")  # fmt: skip
    return runs, same_none, same_dual


def same_answer(theirs: list[int], ours: list[int], stops, gen: int) -> bool:
    cut = len(ours)
    return theirs[:cut] == ours and (cut == gen or theirs[cut] in stops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast-dllm", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--block-seeds", type=int, nargs="+", default=[4, 5],
                    help="one-layer checkpoints of the block-wise variant")  # fmt: skip
    args = ap.parse_args()
    gen_utils = their_sampler(args.fast_dllm)
    total = same = 0
    by_rule: dict[str, list[int]] = {}
    for seed in args.seeds:
        ckpt = write_tiny_dream_checkpoint(tempfile.mkdtemp(), seed=seed)
        model, tok = load_checkpoint(ckpt)
        runner = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
        mask = model.config.mask_token_id

        def forbid_mask(i, x, logits, mask=mask):
            logits = logits.clone()
            logits[..., mask] = -torch.inf
            return logits

        for alg, opts, draw_seed in cases():
            for gen, steps in SHAPES:
                for prompt in PROMPTS:
                    cfg = gen_utils.DreamGenerationConfig(
                        max_length=len(prompt) + gen, mask_token_id=mask,
                        steps=steps, alg=alg, temperature=0.0,
                        top_p=opts.get("top_p"), top_k=opts.get("top_k"),
                        alg_temp=opts.get("alg_temp"),
                    )  # fmt: skip
                    torch.manual_seed(draw_seed)
                    with torch.no_grad():
                        x = gen_utils.DreamGenerationMixin._sample(
                            Wrapped(model), torch.tensor([prompt]), None, cfg,
                            lambda i, x, logits: x, forbid_mask,
                        )  # fmt: skip
                    params = SamplingParams(
                        gen_length=gen, block_length=gen, steps=steps,
                        remasking=alg, seed=draw_seed, **opts,
                    )  # fmt: skip
                    (ours,) = runner.generate([prompt], params)
                    theirs = x[0, len(prompt) :].tolist()
                    ok = same_answer(theirs, ours.token_ids, runner.stop_token_ids, gen)
                    total, same = total + 1, same + ok
                    counts = by_rule.setdefault(alg, [0, 0])
                    counts[0], counts[1] = counts[0] + ok, counts[1] + 1
                    if not ok:
                        print(f"differ: seed {seed} {alg} {opts} draw seed "
                              f"{draw_seed} gen {gen} steps {steps}")  # fmt: skip
    for alg, (ok, n) in by_rule.items():
        print(f"{alg}: {ok}/{n}")
    print(f"{same}/{total} answers token-identical to Dream's _sample")
    runs, ok_none, ok_dual = block_variant(args.fast_dllm, args.block_seeds)
    print(f"fast_dllm_block (cache_mode none): {ok_none}/{runs}")
    print(f"fast_dllm_block (paged + dual_refresh): {ok_dual}/{runs}")
    print(
        f"{ok_none + ok_dual}/{2 * runs} answers token-identical to Fast-dLLM's "
        "block-wise _sample (dual_cache=True)"
    )


def cases():
    """(rule, options, draw seed): every rule plain, then with the options."""
    for alg in (*CONFIDENCE_RULES, "origin"):
        for opts in OPTIONS:
            if "alg_temp" in opts and alg == "origin":
                continue
            seeds = (0, 1) if opts or alg == "origin" else (0,)
            for draw_seed in seeds:
                yield alg, opts, draw_seed


if __name__ == "__main__":
    main()
