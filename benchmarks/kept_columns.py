"""Which prompt columns a policy keeps where the answer is read (issue 26): per
layer, the share of KV heads that keep the question's key, the queried record's
three digits, and any of the record's six columns, at step 0.

    OMP_NUM_THREADS=1 python benchmarks/kept_columns.py --model M \\
        --prompt-tokens 2048 --samples 32 --budget 102 \\
        --policies maskkv snapkv-mask-window

Each held-out ``kv`` prompt (``train_model``'s, as ``maskkv eval`` draws them) runs
alone through the embedded engine with the policy at budget B; a wrapper around the
engine's policy records each layer's kept prompt indices per KV head. The question's
key is the last prompt token (``? kNNN``); the record is ``kNNN : d d d ;``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import train_model as tm  # noqa: E402
from window_probe import answer_columns  # noqa: E402

from maskkv_vllm.config import CacheConfig  # noqa: E402
from maskkv_vllm.evaluation.synthetic import word_tokenizer  # noqa: E402
from maskkv_vllm.eviction.config import MaskKVConfig  # noqa: E402
from maskkv_vllm.eviction.policy_set import PolicySet  # noqa: E402
from maskkv_vllm.models.builtin import resolve_model  # noqa: E402
from maskkv_vllm.models.loader import load_model  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.worker.model_runner import ModelRunner  # noqa: E402


class Recording:
    """A policy that keeps what ``inner`` keeps and remembers it: ``kept`` holds
    (layer, prompt_len, one set of kept prompt indices per KV head) per call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.kept: list[tuple[int, int, list[set[int]]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def select(self, ctx, budget: int):
        selection = self.inner.select(ctx, budget)
        self.kept.append(
            (ctx.layer, ctx.prompt_len, [set(s.tolist()) for s in selection])
        )
        return selection


class RecordingSet(PolicySet):
    """The engine's policies, each evicting one wrapped in ``Recording``."""

    def __init__(self, config: MaskKVConfig, num_layers: int) -> None:
        super().__init__(config, num_layers)
        self.recorders: dict[str, Recording] = {}

    def get(self, name: str | None):
        policy = super().get(name)
        if not policy.evicts:
            return policy
        return self.recorders.setdefault(name, Recording(policy))


def shares(prompt: list[int], kept: list[set[int]]) -> tuple[float, float, float]:
    """Of one layer's KV heads: the share keeping the question's key (the last
    prompt token), the record's three digits, any of its six columns."""
    digits = answer_columns(prompt)
    record = range(digits[0] - 2, digits[-1] + 2)
    n = len(kept)
    return (
        sum(len(prompt) - 1 in s for s in kept) / n,
        sum(all(c in s for c in digits) for s in kept) / n,
        sum(any(c in s for c in record) for s in kept) / n,
    )


def run(model, samples, policy: str, budget: int) -> tuple[int, dict[int, list]]:
    """Right answers, and per layer the mean of ``shares`` over the prompts."""
    policies = RecordingSet(MaskKVConfig(), model.config.n_layers)
    if not isinstance(policies.get(policy), Recording):
        raise ValueError(f"policy={policy!r} keeps the whole prompt: nothing to record")
    runner = ModelRunner(model, cache_config=CacheConfig(cache_mode="paged"),
                         policies=policies, early_stop=False)  # fmt: skip
    params = SamplingParams(gen_length=8, block_length=8, steps=8,
                            kv_policy=policy, kv_budget=budget)  # fmt: skip
    eos, right = model.config.eos_token_id, 0
    per_layer: dict[int, list] = {}
    for prompt, want in samples:
        recorder = policies.recorders[policy]
        recorder.kept.clear()
        [out] = runner.generate([prompt], params)
        right += out.token_ids == [t for t in want if t != eos]
        for layer, m, kept in recorder.kept:
            assert m == len(prompt), f"prompt_len {m} for a prompt of {len(prompt)}"
            per_layer.setdefault(layer, []).append(shares(prompt, kept))
    means = {
        layer: [sum(col) / len(rows) for col in zip(*rows, strict=True)]
        for layer, rows in sorted(per_layer.items())
    }
    return right, means


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="retrieval")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--policies", nargs="+", default=["maskkv", "snapkv-mask-window"])
    args = ap.parse_args(argv)
    model = load_model(resolve_model(args.model)).float().eval()
    tok, length = word_tokenizer(), args.prompt_tokens
    rng = random.Random(tm.EVAL_SEED + length + tm.TASK_SEED["kv"])
    samples = [tm.prompt_targets(rng, tok, "kv", length, 0)[:2]
               for _ in range(args.samples)]  # fmt: skip
    print(f"{type(model).__name__}, {args.samples} held-out kv prompts of ~{length} "
          f"tokens, B = {args.budget}; per layer, the share of KV heads keeping the "
          "question's key / the record's 3 digits / any of its 6 columns:")  # fmt: skip
    for policy in args.policies:
        right, means = run(model, samples, policy, args.budget)
        print(f"{policy}: right {right}/{len(samples)}")
        for layer, (key, digits, any_col) in means.items():
            print(
                f"  layer {layer}: key {key:.2f}, digits {digits:.2f}, "
                f"any column {any_col:.2f}"
            )


if __name__ == "__main__":
    main()
