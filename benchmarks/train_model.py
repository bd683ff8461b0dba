"""Train a small LLaDA-architecture masked diffusion model on the synthetic tasks.

    OMP_NUM_THREADS=1 python benchmarks/train_model.py --out /tmp/retrieval_run \\
        --seeds 0 1 2 --minutes 72

LLaDA's SFT objective: the prompt stays visible, each answer slot (the answer padded
with EOS to the canvas length) is masked with probability t ~ U(0.2, 1) and weighted
by 1/t. Up to ``--recall`` answered ``? key d d d ;`` recall queries are inserted in
the prompt, their digits always masked (weight 1): many lookups per haystack. Their
keys are drawn from every record, the final query's too, and their digits are never
visible: otherwise the final answer can be found by elimination (the record nobody
asked about), a shortcut measured to win over key matching.

Leads of issue 17 for key matching on a CPU: a fixed number of sequences per step,
``kv`` alone at short prompts first, dense recall queries, and a local-attention
prior in block 0 at init (``add_local_prior``), so each token sees its few
neighbours from step 0 and layer 1 only has to learn the content match. The prior
heads' q/k stay frozen (``--freeze-prior``, no weight decay): left to train, they
lost their locality within ~300 steps and seeds 0-2 sat on the plateau (2k steps).

Long prompts: layer 1 matches keys by content, and RoPE turns that match with the
distance; with head_dim 32 and ``--rope-theta`` 1e4 only about two pairs turn by
less than a radian over 2048 tokens, and at 2048 tokens the model trained so found
the near records (0.97 in the second quarter) but not the far ones (0.56 in the
first quarter; ``benchmarks/kv_by_distance.py``), plateauing at 0.75 for 800 steps.
Continuing from those weights with ``--init ... --rope-theta 20000`` (a larger base
for a longer context, as long-context LLaMA variants do; the state dict is the
same) scored 0.85 before any step and 0.93 after 1250 steps at 1024-2048 tokens.

Stages are gated on held-out accuracy: training stays at a prompt length until ``kv``
answers on held-out prompts (LLaDA's sampler, up to the first EOS) reach
``--threshold`` (every task of ``--gate-tasks`` does, when given: a ``vt`` curriculum
stays at a short length until the hops are learnt), then doubles the length, up
to ``--final-length``. Several ``--seeds`` are tried for ``--probe-steps`` at the first
stage and the one that left the plateau (per-digit ~40% = a digit of a random
record) is kept. ``vt`` joins the mix from ``--vt-from`` tokens when
``--vt-fraction`` > 0. The checkpoint (official LLaDA tensor names, bf16 safetensors,
config.json, tokenizer.json) and ``training.json`` (flags, history, final scores) are
rewritten at every evaluation; at the last stage only when the gate improves, and
otherwise into ``OUT-latest``, the weights to resume from.

``--arch dream`` trains Dream's architecture instead (issue 26, item 2): q/k/v biases
and shifted logits, the token at position i read from output i - 1, as in the
autoregressive LLM Dream was initialised from. The last prompt token's output then
predicts the answer's first token, so it must look up the record itself, where
LLaDA's visible prompt tokens are never a prediction. The checkpoint is a Dream one
(``model_type`` "Dream", Hugging Face tensor names). ``--init`` takes a Dream
checkpoint or a LLaDA one of the same sizes, whose weights are mapped one to one
(biases zero: the same network, unshifted). Attention is bidirectional, so that
token can also read the answer off the mask tokens, which retrieve (measured on
r26d); ``--blind-prompt`` closes that route on a share of the rows: their prompt
queries see no canvas key, as an autoregressive LLM's last prompt token sees no
answer slot.

``--blind-canvas`` is its mirror, for either architecture: on a share of the rows
the canvas sees only itself and the prompt's last ``CANVAS_WINDOW`` tokens (SnapKV's
window), so those tokens must look the answer up and the mask tokens read it off
them; on the other rows the mask tokens may still look it up themselves. Meant to
train a model where both retrieve, between the two extremes measured so far.

``--hop-aux`` (card entry 25): a probe head per ``--hop-aux-layer`` block, trained with
the model, reads at each resolved ``vt`` question's name what its first lookups find
(``hop_slots``); its cross-entropy joins the loss. Deep supervision, training only: the
heads are not saved, so the checkpoint is the plain model.

Held-out prompts carry no recall query, training prompts ``--recall`` of them;
``--recall-free`` lays a share of the training prompts out as held-out ones. Without
it ``needle``'s answer stopped at EOS on 97-100% of 512-token prompts laid out as in
training and on 2-22% laid out as held out, on the same weights (card entry 35).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from maskkv_vllm.evaluation.synthetic import (
    NUM_CHAINS,
    VARS,
    VT_HOPS,
    Sample,
    facts,
    make_sample,
    word_tokenizer,
)
from maskkv_vllm.models.attention import DenseAttention
from maskkv_vllm.models.dream import DreamModel
from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import load_model
from maskkv_vllm.models.rope import rope_inv_freq
from maskkv_vllm.models.tiny import save_checkpoint
from maskkv_vllm.models.tokenizer import BOS
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

GEN_LENGTH = 8
T_MIN = 0.2
PRETRAIN_EPS = 1e-3
"""LLaDA pretraining's smallest masking ratio: p = eps + (1 - eps) t, t ~ U(0, 1)."""
EVAL_SEED = 777_000  # held-out prompts: a generator stream training never draws from
TASK_SEED = {"kv": 0, "vt": 1, "needle": 2, "multi": 3}
MODELS = {"llada": LLaDAModel, "dream": DreamModel}
DIRECT_FORMS = ("suffix", "prefix")
VAR_SET = frozenset(VARS)


@dataclass(frozen=True)
class VtPrompts:
    """How training draws a ``vt`` prompt: a curriculum's knobs."""

    hops: tuple[int, ...] = VT_HOPS
    """Hop counts a chain draws from."""
    chains: int = NUM_CHAINS
    """Chains a prompt hides, the queried one and its distractors."""
    direct: float = 0.0
    """Share of questions asking one statement's own right-hand side."""
    direct_form: str = "suffix"
    """Where a direct question's (and direct recall query's) ``=`` goes: after the
    name or before it."""
    recall_direct: float = 0.0
    """Share of recall queries on a stated variable that ask its own right-hand
    side (``? xB = xA ;``, one lookup in the statement layout) instead of its
    resolved digit."""

    def __post_init__(self) -> None:
        for name in ("direct", "recall_direct"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be within [0, 1]")
        if self.direct_form not in DIRECT_FORMS:
            raise ValueError(
                f"direct_form={self.direct_form!r} is not one of {DIRECT_FORMS}"
            )

    def sample(self, rng: random.Random, length: int) -> Sample:
        s = make_sample(rng, "vt", length, 1, self.hops, self.chains)
        if self.direct > 0 and rng.random() < self.direct:  # drawn only then
            s = direct_question(rng, s, self.direct_form)
        return s


DEFAULT_VT = VtPrompts()
"""The task's own ``vt`` prompts, which checks score."""


@dataclass(frozen=True)
class KvPrompts:
    """How training draws a ``kv`` prompt."""

    var_keys: float = 0.0
    """Share of prompts whose records are keyed by ``vt``'s variable names
    (``x17 : d d d ;``), so that the lookup by a key's name is learnt on the names
    ``vt`` asks by too."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.var_keys <= 1.0:
            raise ValueError(f"var_keys={self.var_keys} must be within [0, 1]")

    def sample(self, rng: random.Random, length: int) -> Sample:
        s = make_sample(rng, "kv", length)
        if self.var_keys > 0 and rng.random() < self.var_keys:  # drawn only then
            s = var_keyed(rng, s)
        return s


DEFAULT_KV = KvPrompts()
"""The task's own ``kv`` prompts, which checks score."""


def var_keyed(rng: random.Random, sample: Sample) -> Sample:
    """``sample`` (a ``kv`` prompt) with its records' keys renamed to distinct
    variable names, as many records as there are names (the rest keep theirs); the
    final question's key is always renamed."""
    words = sample.prompt.split()
    keys = [w for i, w in enumerate(words[:-2]) if words[i + 1] == ":"]
    asked = words[-1]
    others = [k for k in keys if k != asked]
    renamed = [asked, *rng.sample(others, min(len(others), len(VARS) - 1))]
    names = dict(zip(renamed, rng.sample(VARS, len(renamed)), strict=True))
    prompt = " ".join(names.get(w, w) for w in words)
    return Sample(sample.task, prompt, sample.answer)


@dataclass(frozen=True)
class Canvas:
    """The answer side of a training row: its slots and what ``multi`` asks."""

    length: int = GEN_LENGTH
    """Answer slots; every answer is padded with EOS to this many."""
    multi_keys: tuple[int, int] | None = None
    """Fewest and most keys a ``multi`` prompt asks, drawn uniformly (None: as
    many as fill the canvas, every time)."""

    def __post_init__(self) -> None:
        if self.length < 4:
            raise ValueError(f"canvas length={self.length} must be >= 4 (kv's "
                             "3 digits and an EOS)")  # fmt: skip
        lo, hi = self.multi_keys or (1, self.full)
        if not 1 <= lo <= hi <= self.full:
            raise ValueError(
                f"multi_keys={self.multi_keys!r} must be 1 <= fewest <= most <= "
                f"{self.full} (the keys whose answers fill {self.length} slots)"
            )

    @property
    def full(self) -> int:
        """Keys whose answers (``d d d ;`` each, less the last ``;``) fit."""
        return (self.length + 1) // 4

    def keys(self, rng: random.Random) -> int:
        """Keys one ``multi`` prompt asks."""
        if self.multi_keys is None:
            return self.full
        lo, hi = self.multi_keys
        return lo if lo == hi else rng.randint(lo, hi)  # drawn only for a range


DEFAULT_CANVAS = Canvas()
"""The 8-slot canvas every run before ``--gen-length`` trained."""

# LLaDA tensor names (after ``model.transformer.blocks.N.``) -> Dream's.
LLADA_TO_DREAM_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "attn_out.weight": "self_attn.o_proj.weight",
    "ff_norm.weight": "post_attention_layernorm.weight",
    "ff_proj.weight": "mlp.gate_proj.weight",  # LLaDA's ff_proj is the gate
    "up_proj.weight": "mlp.up_proj.weight",
    "ff_out.weight": "mlp.down_proj.weight",
}
LLADA_TO_DREAM_TOP = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}


def make_config(args: argparse.Namespace, tok) -> LLaDAConfig | DreamConfig:
    if args.arch == "dream":
        return make_dream_config(args, tok)
    vocab = tok.get_vocab_size()
    return LLaDAConfig(
        d_model=args.heads * args.head_dim,
        n_heads=args.heads,
        n_kv_heads=args.heads,
        n_layers=args.layers,
        mlp_hidden_size=args.mlp,
        vocab_size=vocab,
        embedding_size=vocab,
        mask_token_id=tok.token_to_id("<|mdm_mask|>"),
        eos_token_id=tok.token_to_id("<|endoftext|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        rope_theta=args.rope_theta,
        max_sequence_length=4096,
    )


def make_dream_config(args: argparse.Namespace, tok) -> DreamConfig:
    """The Dream twin of ``make_config``: same sizes and ids, LLaDA's RMSNorm eps
    (so a LLaDA checkpoint maps onto it exactly), MHA (n_kv_heads = n_heads)."""
    eos = tok.token_to_id("<|endoftext|>")
    return DreamConfig(
        hidden_size=args.heads * args.head_dim,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        num_hidden_layers=args.layers,
        intermediate_size=args.mlp,
        vocab_size=tok.get_vocab_size(),
        mask_token_id=tok.token_to_id("<|mdm_mask|>"),
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=tok.token_to_id(BOS),
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
    )


def shift_of(config) -> int:
    """1 for a model that reads the token at i from output i - 1 (Dream), else 0."""
    return int(getattr(config, "shifted_logits", False))


def embedding(model: LLaDAModel | DreamModel) -> torch.nn.Embedding:
    """The token embedding of either architecture."""
    inner = model.model
    if hasattr(inner, "embed_tokens"):  # Dream
        return inner.embed_tokens
    return inner.transformer.wte


def qk_projections(block) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """A block's q and k projections (Dream nests them in ``self_attn``)."""
    attn = getattr(block, "self_attn", block)
    return attn.q_proj, attn.k_proj


def dream_state_from_llada(
    llada: dict[str, torch.Tensor], dream: DreamModel
) -> dict[str, torch.Tensor]:
    """A LLaDA state dict under Dream's names, every bias zero: the same network
    (Dream only shifts which output reads which token).

    Raises:
        ValueError: ``llada`` holds a tensor with no Dream counterpart.
    """
    out = {k: torch.zeros_like(v) for k, v in dream.state_dict().items()
           if k.endswith(".bias")}  # fmt: skip
    prefix = "model.transformer.blocks."
    for name, tensor in llada.items():
        layer, _, rest = name.removeprefix(prefix).partition(".")
        if name in LLADA_TO_DREAM_TOP:
            out[LLADA_TO_DREAM_TOP[name]] = tensor
        elif name.startswith(prefix) and rest in LLADA_TO_DREAM_BLOCK:
            out[f"model.layers.{layer}.{LLADA_TO_DREAM_BLOCK[rest]}"] = tensor
        else:
            raise ValueError(f"LLaDA tensor {name} has no Dream counterpart")
    return out


LAYER_INDEX = re.compile(r"\.(?:layers|blocks)\.(\d+)\.")
ZERO_WHEN_GROWN = ("self_attn.o_proj.weight", "mlp.down_proj.weight",
                   "attn_out.weight", "ff_out.weight")  # fmt: skip
"""A layer's writes to the residual stream (Dream's names, then LLaDA's)."""


def grown_state(state: dict, model: LLaDAModel | DreamModel) -> dict:
    """A shallower checkpoint in a deeper model: its layers stay first, and each
    added layer keeps its fresh init but writes nothing to the residual stream
    (attention and MLP output projections zero), so the deeper model computes
    what the checkpoint computed until training moves the new layers.

    Raises:
        ValueError: ``state`` is not a prefix of ``model``'s layers (other names
            or shapes, or more layers).
    """
    out = {}
    for name, tensor in model.state_dict().items():
        if name in state:
            if state[name].shape != tensor.shape:
                raise ValueError(f"--init tensor {name} is {tuple(state[name].shape)}"
                                 f", the model's {tuple(tensor.shape)}")  # fmt: skip
            out[name] = state[name]
        elif LAYER_INDEX.search(name) is None:
            raise ValueError(f"--init has no tensor {name}")
        else:
            zero = name.endswith(ZERO_WHEN_GROWN)
            out[name] = torch.zeros_like(tensor) if zero else tensor.clone()
    extra = sorted(state.keys() - out.keys())
    if extra:
        raise ValueError(f"--init tensors the model lacks: {extra[:3]}")
    return out


def load_init(model: LLaDAModel | DreamModel, path: str) -> None:
    """Load ``--init``'s weights: same architecture, or LLaDA into Dream, into as
    many layers or more (``grown_state``)."""
    state = load_model(path).state_dict()
    llada = any(k.startswith("model.transformer.") for k in state)
    if isinstance(model, DreamModel) and llada:
        state = dream_state_from_llada(state, model)
    if state.keys() != model.state_dict().keys():
        state = grown_state(state, model)
    model.load_state_dict(state)


def next_length(length: int, accuracy: float, threshold: float, final: int) -> int:
    """The stage gate: double the prompt length once ``accuracy`` passes."""
    if accuracy < threshold or length >= final:
        return length
    return min(2 * length, final)


def gate_accuracy(entry: dict, tasks: list[str]) -> float:
    """The worst answer accuracy of the gated ``tasks`` a check ran (kv always runs)."""
    return min(entry[t]["answer"] for t in tasks if t in entry)


def pick_task(u: float, vt: float, needle: float, multi: float = 0.0) -> str:
    """The task of one sequence from a uniform draw ``u``: vt, needle, multi,
    else kv."""
    if u < vt:
        return "vt"
    if u < vt + needle:
        return "needle"
    return "multi" if u < vt + needle + multi else "kv"


def trained_tasks(args, vt: bool) -> list[str]:
    """The tasks a check scores: kv, then each one trained (vt once it joined)."""
    extra = [("needle", args.needle_fraction > 0), ("vt", vt and args.vt_fraction > 0),
             ("multi", args.multi_fraction > 0)]  # fmt: skip
    return ["kv"] + [task for task, on in extra if on]


def vt_of(args) -> VtPrompts:
    """The training ``vt`` prompts."""
    return VtPrompts(tuple(args.vt_hops), args.vt_chains, args.vt_direct,
                     args.vt_direct_form, args.vt_recall_direct)  # fmt: skip


def is_curriculum(vt: VtPrompts) -> bool:
    """Whether ``vt``'s chains differ from the task's own (checks then score them
    as ``vt_trained`` too)."""
    return (vt.hops, vt.chains) != (DEFAULT_VT.hops, DEFAULT_VT.chains)


def canvas_of(args) -> Canvas:
    """The training canvas."""
    keys = args.multi_keys
    if keys is not None and len(keys) > 2:
        raise ValueError(f"--multi-keys {keys} takes N, or the fewest and most")
    return Canvas(args.gen_length, None if keys is None else (keys[0], keys[-1]))


def final_question(words: list[str]) -> int:
    """Where the prompt's final question starts: its last ``?`` (a ``multi``
    question goes on with all its keys)."""
    return len(words) - 1 - words[::-1].index("?")


def statements(words: list[str]) -> dict[str, str]:
    """Each stated variable's own right-hand side (``xB = xA`` gives ``xB: xA``), in
    prompt order; ``synthetic.facts`` resolves them to digits instead."""
    return {
        words[i]: words[i + 2] for i in range(len(words) - 2) if words[i + 1] == "="
    }


def direct_question(rng: random.Random, sample: Sample, form: str = "suffix") -> Sample:
    """``sample`` (a ``vt`` prompt) asking one statement's own right-hand side.

    The final ``? xC`` becomes ``? xB =`` (``form`` "suffix") or ``? = xB``
    ("prefix": the question ends on the name, as a resolved one does) for a
    statement ``xB = xA ;`` drawn from every chain, answered ``xA`` (a digit for a
    chain's first statement): one lookup, the first hop of a chain, rewarded alone.
    The ``=`` tells it from the resolved question.
    """
    words = sample.prompt.split()
    q = final_question(words)
    name, value = rng.choice(list(statements(words[:q]).items()))
    ask = [name, "="] if form == "suffix" else ["=", name]
    return Sample(sample.task, " ".join([*words[:q], "?", *ask]), value)


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant."""
    return lr * min(1.0, step / max(1, warmup))


def init_weights(model: LLaDAModel | DreamModel, gen: torch.Generator) -> None:
    """Every matrix N(0, 0.02); norms stay 1, biases (Dream's q/k/v) 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.zero_()


@torch.no_grad()
def add_local_prior(
    model: LLaDAModel | DreamModel,
    gen: torch.Generator,
    pairs: tuple[int, ...] = (0, 1, 2, 3, 4, 5),
    peak_logit: float = 12.0,
    offsets: tuple[int, ...] = (1, 2, 3, 4),
    num_heads: int | None = None,
) -> torch.Tensor:
    """Make block 0 attend to each token's few neighbours from step 0.

    A shared unit direction u is added to every embedding (as large as the average
    embedding), and ``beta * u`` to the rows of block 0's k projection that feed
    the first half of the RoPE ``pairs`` of every head; q gets the same term rotated
    back by the head's offset. Then head h's q·k between positions m and n gains
    ``peak_logit * mean_i cos((m - n - offset_h) * freq_i)``: a bump around
    n = m - offset_h some ``pi / (2 * max freq)`` tokens wide, whatever the content.

    Args:
        model: a freshly initialised model, changed in place (shapes unchanged).
        gen: seeds u.
        pairs: RoPE pair indices (0 = highest frequency); mid frequencies give a
            window of a few tokens.
        peak_logit: the added attention logit at the bump's centre.
        offsets: per head (cycled), how many tokens back the bump sits; 0 is
            centred on the token itself, negative looks ahead.
        num_heads: the prior goes to the first ``num_heads`` heads (default all).

    Returns:
        u: (d_model,) the shared direction.
    """
    c = model.config
    wte = embedding(model).weight  # (vocab, d_model)
    u = torch.randn(c.d_model, generator=gen)
    u /= u.norm()
    wte += wte.norm(dim=1).mean() * u
    normed = wte * torch.rsqrt(wte.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps)
    s = (normed @ u).mean()  # u-component of a normalised embedding
    beta = math.sqrt(peak_logit * math.sqrt(c.head_dim) / len(pairs)) / s
    (q_proj, k_proj), half = qk_projections(model.blocks[0]), c.head_dim // 2
    freq = rope_inv_freq(c.head_dim, c.rope_theta, u.device)
    num_heads = c.n_heads if num_heads is None else min(num_heads, c.n_heads)
    for h in range(num_heads):
        phase = offsets[h % len(offsets)] * freq[list(pairs)]  # (len(pairs),)
        rows = [h * c.head_dim + i for i in pairs]
        # z_q = s * exp(-i * offset * freq): the bump moves offset tokens back.
        q_proj.weight[rows] += beta * phase.cos()[:, None] * u
        q_proj.weight[[r + half for r in rows]] -= beta * phase.sin()[:, None] * u
    for h in range(c.n_kv_heads * num_heads // c.n_heads):
        k_proj.weight[[h * c.head_dim + i for i in pairs]] += beta * u
    return u


def recall_queries(
    rng: random.Random,
    prompt: str,
    count: int,
    colon: float = 0.0,
    direct: float = 0.0,
    direct_form: str = "suffix",
) -> tuple[list[str], list[int]]:
    """The prompt's words with ``count`` answered recall queries before its final query.

    Unlike ``synthetic.with_recall_queries`` (for eval prompts: distinct names, never
    the final one), the names are drawn with replacement from every fact, the final
    query's too: a short prompt still gets ``count`` lookups, and the final answer
    cannot be found by elimination (the one record nobody asked about). The values
    are always masked in training, so asking the final name gives nothing away. With
    probability ``colon`` a query is written like a record (``? name : value ;``), so
    its value slots sit where the record's digits do relative to the name. With
    probability ``direct`` a query on a stated variable asks its own right-hand
    side, written like its statement (``? xB = xA ;``; ``direct_form`` "prefix":
    ``? = xB xA ;``, so the name's own output predicts it, as a resolved
    ``? xB d ;`` query's does).

    Returns:
        the words, and the indices of the inserted value words (the targets).
    """
    words = prompt.split()
    q = final_question(words)
    body, question = words[:q], words[q:]
    known = facts(body)  # a direct question's "? = xB" states nothing
    stated = statements(body)
    targets = []
    for name in rng.choices(sorted(known), k=count):
        colon_form = rng.random() < colon
        # drawn only then: runs without it keep their data stream
        if direct > 0 and name in stated and rng.random() < direct:
            body += ["?", name, "="] if direct_form == "suffix" else ["?", "=", name]
            value = [stated[name]]
        else:
            body += ["?", name] + ([":"] if colon_form else [])
            value = known[name]
        targets += range(len(body), len(body) + len(value))
        body += [*value, ";"]
    return [*body, *question], targets


def prompt_targets(
    rng,
    tok,
    task: str,
    length: int,
    recall: int,
    colon: float = 0.0,
    vt=DEFAULT_VT,
    canvas=DEFAULT_CANVAS,
    kv=DEFAULT_KV,
):
    """Prompt ids, EOS-padded answer ids and the recall-digit slots of one sample
    (``vt``, ``kv``: how a ``vt`` or ``kv`` prompt is drawn; ``canvas``: the
    answer's slots and the keys a ``multi`` prompt asks)."""
    if task == "vt":
        s = vt.sample(rng, length)
    elif task == "kv":
        s = kv.sample(rng, length)
    elif task == "multi":
        s = make_sample(rng, task, length, canvas.keys(rng))
    else:
        s = make_sample(rng, task, length)
    direct = vt.recall_direct if task == "vt" else 0.0
    words, slots = recall_queries(rng, s.prompt, recall, colon, direct, vt.direct_form)
    prompt = tok.encode(" ".join(words)).ids
    answer = tok.encode(s.answer, add_special_tokens=False).ids
    eos, n = tok.token_to_id("<|endoftext|>"), canvas.length
    return prompt, (answer + [eos] * n)[:n], [1 + j for j in slots]


def make_batch(
    rng,
    tok,
    config,
    tasks: list[str],
    length: int,
    recall: int,
    colon: float = 0.0,
    gen: torch.Generator | None = None,
    pretrain: float = 0.0,
    vt=DEFAULT_VT,
    canvas=DEFAULT_CANVAS,
    kv=DEFAULT_KV,
    pretrain_tasks: Collection[str] | None = None,
    recall_free: float = 0.0,
):
    """Left-padded rows (prompt + answer), their positions, key mask and targets.

    A row takes LLaDA's pretraining objective with probability ``pretrain``: every
    real token, prompt included, masked with one ratio p = eps + (1 - eps) t, weight
    1/p scaled so that the row's loss is per token of the row (the SFT rows' is per
    canvas slot). Prompt tokens then learn to be predicted from the rest of the
    prompt: a masked record digit from its key's other mentions, as a pretrained LLM's
    tokens learn to look things up. Only rows of ``pretrain_tasks`` (None: every
    task) take it; the draws stay the same, so other rows keep their masks. A row's
    prompt gets no recall query with probability ``recall_free``, as held-out prompts.

    Returns:
        ids, positions, target: (B, T) int; key_mask, masked: (B, T) bool;
        weight: (B, T) loss weights (1/t on the canvas, 1 on recall values).
    """
    counts = [recall] * len(tasks)
    if recall_free > 0:  # drawn only then: runs without it keep their data stream
        counts = [0 if rng.random() < recall_free else recall for _ in tasks]
    samples = [prompt_targets(rng, tok, task, length, n, colon, vt, canvas, kv)
               for task, n in zip(tasks, counts, strict=True)]  # fmt: skip
    width = max(len(p) for p, _, _ in samples)
    ids = torch.tensor(
        [[config.pad_token_id] * (width - len(p)) + p + a for p, a, _ in samples]
    )
    offset = torch.tensor([width - len(p) for p, _, _ in samples])[:, None]
    col = torch.arange(width + canvas.length)
    positions = (col - offset).clamp_min(0)
    key_mask = col >= offset
    is_recall = torch.zeros_like(ids, dtype=torch.bool)
    for row, (_, _, slots) in enumerate(samples):
        is_recall[row, [offset[row, 0].item() + j for j in slots]] = True
    # ``gen``: the run's own stream, so evaluations never shift the training data.
    t = T_MIN + (1 - T_MIN) * torch.rand(len(tasks), 1, generator=gen)
    masked = torch.rand(ids.shape, generator=gen) < t
    masked[:, :width] = False
    masked[:, width] |= ~masked.any(dim=1)  # at least one masked slot per row
    # Recall values are always masked (weight 1): a visible one would let the final
    # answer be found by elimination (the record no query's digits match).
    masked |= is_recall
    weight = torch.where(is_recall, torch.ones(()), 1.0 / t)
    if pretrain > 0:  # drawn only then: runs without it keep their data stream
        rows = torch.rand(len(tasks), 1, generator=gen) < pretrain
        if pretrain_tasks is not None:
            rows &= torch.tensor([[t in pretrain_tasks] for t in tasks])
        p = PRETRAIN_EPS + (1 - PRETRAIN_EPS) * torch.rand(len(tasks), 1, generator=gen)
        whole = (torch.rand(ids.shape, generator=gen) < p) & key_mask
        whole[:, -1] |= ~whole.any(dim=1)  # at least one masked token per row
        real = key_mask.sum(dim=1, keepdim=True)
        masked = torch.where(rows, whole, masked)
        weight = torch.where(rows, canvas.length / (p * real), weight)
    noisy = torch.where(masked, torch.full_like(ids, config.mask_token_id), ids)
    return noisy, positions, key_mask, ids, masked, weight


CANVAS_WINDOW = 32
"""Prompt tokens a blind canvas still sees (``--blind-canvas``): SnapKV's window."""


class BlindAttention:
    """Dense attention in which the prompt queries of some rows see no canvas key
    (``--blind-prompt``), and the canvas queries of some rows see only the
    prompt's last ``window`` keys (``--blind-canvas``).

    Args:
        key_mask: (B, T) bool, True for real tokens.
        blind: (B,) bool, the rows whose prompt (the first T - gen_length columns)
            does not attend to the canvas; None: no row.
        gen_length: the canvas, the last columns.
        canvas_blind: (B,) bool, the rows whose canvas attends only to itself and
            the prompt's last ``window`` columns (prompts are left-padded, so
            those are its last tokens); None: no row.
    """

    def __init__(
        self,
        key_mask: torch.Tensor,
        blind: torch.Tensor | None,
        gen_length: int = GEN_LENGTH,
        canvas_blind: torch.Tensor | None = None,
        window: int = CANVAS_WINDOW,
    ) -> None:
        rows, width = key_mask.shape
        col = torch.arange(width)
        is_canvas = col >= width - gen_length
        far = col < width - gen_length - window  # prompt keys a blind canvas misses
        none = torch.zeros(rows, dtype=torch.bool)
        blind = none if blind is None else blind
        canvas_blind = none if canvas_blind is None else canvas_blind
        hidden = blind[:, None, None] & ~is_canvas[:, None] & is_canvas  # (B, Tq, Tk)
        hidden |= canvas_blind[:, None, None] & is_canvas[:, None] & far
        self.mask = (key_mask[:, None, :] & ~hidden)[:, None]  # (B, 1, Tq, Tk)

    def __call__(self, layer, q, k, v):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.mask, enable_gqa=q.shape[1] != k.shape[1]
        )


def loss_fn(
    model, ids, positions, key_mask, target, masked, weight, blind=None,
    gen_length=GEN_LENGTH, canvas_blind=None,
):  # fmt: skip
    """LLaDA's SFT loss: weighted (1/t on the canvas) cross-entropy of masked slots,
    per canvas slot (``gen_length`` of them a row).

    For a shifted model (Dream) the token at i is read from output i - 1; a masked
    first real token (no real token before it) is not scored. ``blind``: (B,) bool,
    rows whose prompt queries see no canvas key; ``canvas_blind``: (B,) bool, rows
    whose canvas sees only the prompt's last ``CANVAS_WINDOW`` tokens
    (``BlindAttention``).
    """
    attn = DenseAttention(key_mask)
    if blind is not None or canvas_blind is not None:
        attn = BlindAttention(key_mask, blind, gen_length, canvas_blind)
    hidden = model(ids, positions, attn)
    if shift_of(model.config):
        hidden = hidden[:, :-1]  # output i - 1 predicts token i
        target, weight = target[:, 1:], weight[:, 1:]
        masked = masked[:, 1:] & key_mask[:, :-1]
    logits = model.logits(hidden[masked])
    ce = F.cross_entropy(logits, target[masked], reduction="none")
    return (ce * weight[masked]).sum() / (masked.shape[0] * gen_length)


def hop_slots(
    words: list[str], hops: int = 1, records: bool = False
) -> list[tuple[int, tuple[str, ...]]]:
    """Where ``words`` ask a stated variable resolved (``? xB`` not followed by
    ``=`` or ``:``): the name's index and what its first ``hops`` lookups find
    there, each the last one's right-hand side (``xC`` -> ``xB``, ``xA``, ``d``; a
    digit, once reached, stays). ``records`` adds each statement's right-hand name
    (the ``xB`` of ``xC = xB ;``) and its lookups, in index order: the chain
    resolved in place, so a question needs one lookup of its own statement."""
    stated = {k: v for k, v in statements(words).items() if k in VAR_SET}
    out = []
    for i in range(len(words) - 1):
        name = words[i + 1]
        if records and words[i] == "=" and i > 0 and words[i - 1] in stated:
            if i > 1 and words[i - 2] == "?":
                continue  # a direct question's answer
        elif words[i] != "?" or (i + 2 < len(words) and words[i + 2] in ("=", ":")):
            continue  # not a question, a direct one, or a var-keyed kv one
        if name not in stated:
            continue
        found = []
        for _ in range(hops):
            name = stated.get(name, name)
            found.append(name)
        out.append((i + 1, tuple(found)))
    return out


class HopAux:
    """Deep supervision of a resolved ``vt`` question's lookups, one block each.

    A linear probe (RMS norm, then a vocabulary-wide linear map) on the output of
    block ``layers[k]`` at each resolved question's name, trained with the model to
    read what the question's first k + 1 lookups find there (``hop_slots``): the
    first is the lookup the name probe found missing (card entry 25). With
    ``records`` the same heads also read each statement's right-hand name for its
    lookups (card entry 40). The heads are not saved: the checkpoint is the plain
    model.
    """

    def __init__(
        self,
        model,
        tok,
        layers: tuple[int, ...],
        weight: float,
        records: bool = False,
    ) -> None:
        for layer in layers:
            if not 0 <= layer < len(model.blocks):
                raise ValueError(
                    f"hop aux layer={layer} is outside the model's blocks "
                    f"[0, {len(model.blocks)})"
                )
        if list(layers) != sorted(set(layers)) or not layers:
            raise ValueError(f"hop aux layers={list(layers)} must rise, one per hop")
        if weight <= 0:
            raise ValueError(f"hop aux weight={weight} must be > 0")
        self.layers, self.weight, self.tok = tuple(layers), weight, tok
        self.records = records
        emb = embedding(model)
        d, vocab = emb.embedding_dim, emb.num_embeddings
        self.head = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.RMSNorm(d, elementwise_affine=False),
                torch.nn.Linear(d, vocab),
            )
            for _ in layers
        )
        # per hop, on training rows since a check
        self.right, self.seen = [0] * len(layers), 0

    def slots(
        self, noisy: torch.Tensor, target: torch.Tensor
    ) -> tuple[list[int], list[int], list[list[int]]]:
        """Rows, columns and per-hop ids (hops x slots) of the resolved questions in
        ``target`` (B, T) whose name ``noisy`` (B, T) shows (a pretraining row may
        mask it)."""
        rows, cols, ids = [], [], [[] for _ in self.layers]
        shown = (noisy == target).tolist()
        for r, row in enumerate(target.tolist()):
            words = [self.tok.id_to_token(i) for i in row]
            for c, found in hop_slots(words, len(self.layers), self.records):
                if shown[r][c]:
                    rows.append(r), cols.append(c)
                    for k, w in enumerate(found):
                        ids[k].append(self.tok.token_to_id(w))
        return rows, cols, ids

    def loss(
        self, model, batch, blind, gen_length: int, canvas_blind=None
    ) -> torch.Tensor:
        """``loss_fn`` on ``batch`` plus ``weight`` x each hop head's cross-entropy."""
        captured = {}
        handles = [
            model.blocks[layer].register_forward_hook(
                lambda m, i, o, layer=layer: captured.update({layer: o})
            )
            for layer in self.layers
        ]
        try:
            loss = loss_fn(model, *batch, blind, gen_length, canvas_blind)
        finally:
            for h in handles:
                h.remove()
        rows, cols, ids = self.slots(batch[0], batch[3])
        if not rows:
            return loss
        self.seen += len(rows)
        for k, (layer, head) in enumerate(zip(self.layers, self.head, strict=True)):
            logits, want = head(captured[layer][rows, cols]), torch.tensor(ids[k])
            self.right[k] += int((logits.argmax(-1) == want).sum())
            loss = loss + self.weight * F.cross_entropy(logits, want)
        return loss

    def accuracy(self) -> list[float]:
        """Each hop head's accuracy on training rows since the last call (then
        reset)."""
        acc = [round(r / max(1, self.seen), 4) for r in self.right]
        self.right, self.seen = [0] * len(self.layers), 0
        return acc


def all_masked_rows(config, prompts: list[list[int]], gen_length: int = GEN_LENGTH):
    """Left-padded prompts, each followed by ``gen_length`` mask tokens.

    Returns:
        ids, positions: (B, width + gen_length) int; key_mask: (B, width +
        gen_length) bool; width: the longest prompt.
    """
    width = max(len(p) for p in prompts)
    pad, m = config.pad_token_id, config.mask_token_id
    ids = torch.tensor(
        [[pad] * (width - len(p)) + p + [m] * gen_length for p in prompts]
    )
    offset = torch.tensor([width - len(p) for p in prompts])[:, None]
    col = torch.arange(width + gen_length)
    return ids, (col - offset).clamp_min(0), col >= offset, width


@torch.no_grad()
def canvas_logits(
    model, config, prompts: list[list[int]], gen_length: int = GEN_LENGTH
) -> torch.Tensor:
    """One forward over left-padded prompts, each followed by all-masked answer slots.

    Returns:
        (len(prompts), gen_length, vocab) logits of the answer slots.
    """
    ids, positions, key_mask, width = all_masked_rows(config, prompts, gen_length)
    hidden = model(ids, positions, DenseAttention(key_mask))
    first = width - shift_of(config)  # Dream reads slot j from output j - 1
    return model.logits(hidden[:, first : first + gen_length])


def predict_answers(
    model, config, prompts: list[list[int]], gen_length: int = GEN_LENGTH
) -> torch.Tensor:
    """One parallel argmax over all-masked answer slots of left-padded prompts.

    Returns:
        (len(prompts), gen_length) predicted ids.
    """
    return canvas_logits(model, config, prompts, gen_length).argmax(-1)


def sampled_answers(
    model, prompts: list[list[int]], gen_length: int = GEN_LENGTH
) -> list[list[int]]:
    """Each prompt's answer as LLaDA's sampler gives it (low-confidence
    remasking, one token per step, one block of ``gen_length``), up to its first
    EOS: what ``maskkv eval`` scores."""
    runner = ModelRunner(model, max_num_seqs=16, early_stop=False)
    params = SamplingParams(
        gen_length=gen_length, block_length=gen_length, steps=gen_length
    )
    return [out.token_ids for out in runner.generate(prompts, params)]


@torch.no_grad()
def evaluate(
    model,
    tok,
    config,
    task: str,
    length: int,
    n: int,
    batch: int = 16,
    vt=DEFAULT_VT,
    canvas=DEFAULT_CANVAS,
    kv=DEFAULT_KV,
):
    """Held-out accuracy: ``exact`` and ``digit`` of one argmax over all-masked
    slots (the whole canvas, EOS padding included), ``answer`` of the sampler's
    answer up to its first EOS (the gate: what the evaluation scores)."""
    rng = random.Random(EVAL_SEED + length + TASK_SEED[task])
    samples = [prompt_targets(rng, tok, task, length, 0, 0.0, vt, canvas, kv)[:2]
               for _ in range(n)]  # fmt: skip
    exact = digits = total = 0
    model.eval()
    eos = config.eos_token_id
    answers = sampled_answers(model, [p for p, _ in samples], canvas.length)
    answer = sum(
        got == [t for t in want if t != eos]
        for got, (_, want) in zip(answers, samples, strict=True)
    )
    for i in range(0, n, batch):
        rows = samples[i : i + batch]
        pred = predict_answers(model, config, [p for p, _ in rows], canvas.length)
        want = torch.tensor([a for _, a in rows])
        exact += (pred == want).all(dim=1).sum().item()
        is_digit = want != config.eos_token_id
        digits += ((pred == want) & is_digit).sum().item()
        total += is_digit.sum().item()
    model.train()
    return {"exact": exact / n, "digit": digits / max(1, total), "answer": answer / n}


def save(model, config, tok, out: Path, meta: dict) -> None:
    """Write the checkpoint and ``training.json`` to ``out`` (replaced atomically)."""
    state = {
        k: v.detach().to(torch.bfloat16).contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = out.with_name(out.name + ".tmp")
    save_checkpoint(tmp, config, state, tok)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    tmp.rename(out)


def build(args, tok, seed: int):
    """Seeded model (with the optional prior) and its optimizer."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MODELS[args.arch](make_config(args, tok))
    init_weights(model, gen)
    if args.prior:
        add_local_prior(
            model,
            gen,
            tuple(args.prior_pairs),
            args.prior_logit,
            tuple(args.prior_offsets),
            args.prior_heads,
        )
    if args.init:
        load_init(model, args.init)
    model.requires_grad_(True).train()
    # No weight decay on block 0's q/k: a frozen prior must not shrink.
    prior = [p for proj in qk_projections(model.blocks[0]) for p in proj.parameters()]
    rest = [p for p in model.parameters() if all(p is not q for q in prior)]
    groups = [
        {"params": rest, "weight_decay": 0.01},
        {"params": prior, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    return model, opt


class Run:
    """One seed's model, optimizer, data stream and history."""

    def __init__(self, args, tok, seed: int) -> None:
        self.args, self.tok, self.seed = args, tok, seed
        self.canvas = canvas_of(args)
        self.model, self.opt = build(args, tok, seed)
        self.config = self.model.config
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.length, self.history = 0, args.start_length, []
        self.best_final = -1.0
        self.hop_aux = None
        if args.hop_aux > 0:
            self.hop_aux = HopAux(
                self.model,
                tok,
                tuple(args.hop_aux_layer),
                args.hop_aux,
                args.hop_aux_records,
            )
            self.opt.add_param_group(
                {"params": list(self.hop_aux.head.parameters()), "weight_decay": 0.0}
            )

    def tasks(self) -> list[str]:
        a = self.args
        vt = a.vt_fraction if self.length >= a.vt_from else 0.0
        return [pick_task(self.rng.random(), vt, a.needle_fraction,
                          a.multi_fraction) for _ in range(a.batch)]  # fmt: skip

    def train_step(self) -> float:
        self.step += 1
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.args.lr, self.args.warmup)
        length = self.rng.randint(max(16, self.length // 2), self.length)
        batch = make_batch(
            self.rng,
            self.tok,
            self.config,
            self.tasks(),
            length,
            self.args.recall,
            self.args.recall_colon,
            self.gen,
            self.args.pretrain_fraction,
            vt_of(self.args),
            self.canvas,
            KvPrompts(self.args.kv_var_keys),
            self.args.pretrain_tasks,
            self.args.recall_free,
        )
        blind = canvas_blind = None
        rows = len(batch[0])
        if self.args.blind_prompt > 0:  # drawn only then: the stream stays otherwise
            blind = torch.rand(rows, generator=self.gen) < self.args.blind_prompt
        if self.args.blind_canvas > 0:
            canvas_blind = torch.rand(rows, generator=self.gen) < self.args.blind_canvas
        slots = self.canvas.length
        if self.hop_aux is None:
            loss = loss_fn(self.model, *batch, blind, slots, canvas_blind)
        else:
            loss = self.hop_aux.loss(self.model, batch, blind, slots, canvas_blind)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.prior and self.step <= self.args.freeze_prior:
            # Keep the prior's heads attending to their neighbours; the rest learn.
            heads = min(self.args.prior_heads, self.config.n_heads)
            rows = heads * self.config.head_dim
            for proj in qk_projections(self.model.blocks[0]):
                for p in proj.parameters():  # weight, and Dream's bias
                    p.grad[:rows] = 0
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.hop_aux is not None:
            torch.nn.utils.clip_grad_norm_(self.hop_aux.head.parameters(), 1.0)
        self.opt.step()
        return loss.item()

    def check(self, minutes: float, loss: float) -> dict:
        """Evaluate ``kv`` (and ``needle``, ``vt`` when trained) at the stage length."""
        a, n = self.args, self.args.eval_samples
        entry = {"seed": self.seed, "step": self.step, "minutes": round(minutes, 2),
                 "length": self.length, "loss": round(loss, 4)}  # fmt: skip
        vt = a.vt_fraction > 0 and self.length >= a.vt_from
        for task in trained_tasks(a, vt):
            entry[task] = evaluate(
                self.model, self.tok, self.config, task, self.length, n,
                canvas=self.canvas,
            )  # fmt: skip
        own = vt_of(a)
        curriculum = is_curriculum(own)
        runs = [
            ("vt_trained", vt and curriculum, replace(own, direct=0.0)),
            (
                "vt_direct",
                vt and own.direct + own.recall_direct > 0,
                replace(own, direct=1.0),
            ),
        ]
        for name, on, prompts in runs:  # the curriculum's own chains; the first hop
            if on:
                entry[name] = evaluate(
                    self.model, self.tok, self.config, "vt", self.length, n,
                    vt=prompts, canvas=self.canvas,
                )  # fmt: skip
        if a.kv_var_keys > 0:  # the lookup by a variable's name, in kv's layout
            entry["kv_var"] = evaluate(
                self.model, self.tok, self.config, "kv", self.length, n,
                canvas=self.canvas, kv=KvPrompts(1.0),
            )  # fmt: skip
        if self.hop_aux is not None:  # training rows, not held out
            entry["hop_aux_train"] = self.hop_aux.accuracy()
        self.history.append(entry)
        print(json.dumps(entry), flush=True)
        return entry


def final_scores(run: Run, lengths: list[int], n: int, tasks: list[str]) -> dict:
    """Held-out exact and per-digit accuracy per task per prompt length."""
    out = {}
    for task in tasks:
        out[task] = {
            str(n_tok): evaluate(
                run.model, run.tok, run.config, task, n_tok, n, canvas=run.canvas
            )  # fmt: skip
            for n_tok in lengths
        }
        print(f"final {task}: {json.dumps(out[task])}", flush=True)
    return out


def probe(args, tok, start: float) -> tuple[Run, list[dict]]:
    """Train each seed for ``--probe-steps``; keep the one furthest off the plateau.

    Returns:
        the kept run and every seed's probe entry.
    """
    runs, entries = [], []
    for seed in args.seeds:
        run = Run(args, tok, seed)
        loss = 0.0
        for _ in range(args.probe_steps):
            loss = run.train_step()
        entry = run.check((time.monotonic() - start) / 60, loss)
        entries.append(entry)
        runs.append((entry["kv"]["answer"], entry["kv"]["digit"], -seed, run))
        if gate_accuracy(entry, args.gate_tasks) >= args.threshold:
            break  # this one has left the plateau: no need to try more
    best = max(runs, key=lambda r: r[:3])[3]
    print(f"probe: keeping seed {best.seed}", flush=True)
    return best, entries


def meta_for(args, run: Run, probes: list[dict], done: str = "") -> dict:
    objective = "LLaDA SFT + recall queries"
    if args.arch == "dream":
        objective = "Dream (shifted logits): " + objective
    if args.blind_prompt > 0:
        objective += f"; prompt blind to the canvas on {args.blind_prompt:.0%} of rows"
    if args.blind_canvas > 0:
        objective += (f"; canvas blind to all but the prompt's last {CANVAS_WINDOW} "
                      f"tokens on {args.blind_canvas:.0%} of rows")  # fmt: skip
    if args.pretrain_fraction > 0:
        objective += f" + LLaDA pretraining on {args.pretrain_fraction:.0%} of rows"
        if args.pretrain_tasks is not None:
            objective += f" of {', '.join(args.pretrain_tasks)}"
    return {"args": vars(args), "objective": objective,
            "seed": run.seed, "step": run.step, "length": run.length,
            "probes": probes, "history": run.history, "stopped": done}  # fmt: skip


def latest_dir(out: Path) -> Path:
    """Where a final-stage check that is not the best yet writes its weights."""
    return out.with_name(out.name + "-latest")


def train(args) -> Run:
    tok = word_tokenizer()
    start = time.monotonic()
    if len(args.seeds) > 1:
        run, probes = probe(args, tok, start)
    else:
        run, probes = Run(args, tok, args.seeds[0]), []
    out, loss, done = Path(args.out), 0.0, ""
    while not done:
        loss = run.train_step()
        minutes = (time.monotonic() - start) / 60
        if run.step % 25 == 0:
            print(f"step {run.step} len {run.length} loss {loss:.3f} {minutes:.1f} min",
                  flush=True)  # fmt: skip
        if run.step >= args.steps:
            done = "steps"
        elif minutes >= args.minutes:
            done = "minutes"
        if run.step % args.eval_every and not done:
            continue
        acc = gate_accuracy(run.check(minutes, loss), args.gate_tasks)
        final = run.length >= args.final_length
        if final and acc >= args.final_threshold:
            done = "final threshold"
        meta = {**meta_for(args, run, probes, done), "weights_step": run.step}
        if not final or acc >= run.best_final:
            run.best_final = acc if final else run.best_final
            best, best_step = copy.deepcopy(run.model.state_dict()), run.step
            save(run.model, run.config, tok, out, meta)
        else:  # the weights to resume from (--init) when the best are older
            save(run.model, run.config, tok, latest_dir(out), meta)
        run.length = next_length(run.length, acc, args.threshold, args.final_length)
    run.model.load_state_dict(best)  # the best final-stage (or latest) weights
    lengths = sorted({args.start_length, *args.report_lengths})
    meta = {**meta_for(args, run, probes, done), "weights_step": best_step}
    meta["final"] = final_scores(
        run, lengths, args.final_samples,
        ["kv", "vt", "needle"] + ["multi"] * (args.multi_fraction > 0),
    )  # fmt: skip
    meta["minutes"] = round((time.monotonic() - start) / 60, 2)
    save(run.model, run.config, tok, out, meta)
    return run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--out", required=True, help="checkpoint directory (replaced)")
    add("--minutes", type=float, default=120, help="wall-clock budget")
    add("--steps", type=int, default=100_000, help="at most this many steps")
    add("--arch", choices=sorted(MODELS), default="llada",
        help="dream: q/k/v biases, shifted logits, a Dream checkpoint")  # fmt: skip
    add("--layers", type=int, default=2)
    add("--heads", type=int, default=4)
    add("--head-dim", type=int, default=32)
    add("--mlp", type=int, default=256, help="SwiGLU width")
    add("--rope-theta", type=float, default=1e4)
    add("--lr", type=float, default=1e-3, help="AdamW, constant after warm-up")
    add("--warmup", type=int, default=100, help="linear warm-up steps")
    add("--batch", type=int, default=16, help="sequences per step")
    add("--recall", type=int, default=8, help="recall queries per prompt")
    add("--recall-free", type=float, default=0.0,
        help="share of prompts with no recall query, as the checks' and maskkv "
             "eval's prompts")  # fmt: skip
    add("--prior", action=argparse.BooleanOptionalAction, default=True,
        help="local-attention prior in block 0 at init")  # fmt: skip
    add("--prior-pairs", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5],
        help="RoPE pairs of the prior (0 = highest frequency)")  # fmt: skip
    add("--prior-logit", type=float, default=12.0, help="prior's peak logit")
    add("--prior-offsets", type=int, nargs="+", default=[1, 2, 3, 4],
        help="per head (cycled): tokens back the prior's bump sits")  # fmt: skip
    add("--prior-heads", type=int, default=4, help="block 0 heads with the prior")
    add("--freeze-prior", type=int, default=10**9,
        help="steps block 0's prior heads' q/k stay at their prior (0: never; "
             "they erode within ~300 steps and matching never forms)")  # fmt: skip
    add("--recall-colon", type=float, default=0.0,
        help="share of recall queries as ? key : d d d ; (slower)")  # fmt: skip
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--probe-steps", type=int, default=2500, help="steps per seed in the probe")
    add("--start-length", type=int, default=32, help="first stage's prompt tokens")
    add("--final-length", type=int, default=2048, help="last stage's prompt tokens")
    add("--threshold", type=float, default=0.9, help="kv answers right to double")
    add(
        "--vt-chains",
        type=int,
        default=NUM_CHAINS,
        help="chains in a training vt prompt (checks keep the task's own)",
    )
    add(
        "--vt-hops",
        type=int,
        nargs="+",
        default=list(VT_HOPS),
        help="hop counts of the training vt chains (checks keep the task's own)",
    )
    add("--vt-direct", type=float, default=0.0,
        help="share of training vt questions asking one statement's own right-hand "
             "side (? xB = answered xA: the first hop alone)")  # fmt: skip
    add("--vt-recall-direct", type=float, default=0.0,
        help="share of a vt prompt's recall queries on a variable that ask its own "
             "right-hand side (? xB = xA ;) instead of its resolved digit")  # fmt: skip
    add("--vt-direct-form", choices=DIRECT_FORMS, default="suffix",
        help="a direct question: ? xB = (suffix) or ? = xB (prefix)")  # fmt: skip
    add(
        "--multi-fraction",
        type=float,
        default=0.0,
        help="share of multi sequences (several keys asked in one canvas)",
    )
    add("--gen-length", type=int, default=GEN_LENGTH,
        help="answer slots of a row (the answer EOS-padded to it); a multi "
             "prompt asks as many keys as fill it")  # fmt: skip
    add("--multi-keys", type=int, nargs="+", default=None, metavar="N",
        help="keys a multi prompt asks: N, or the fewest and most (drawn "
             "uniformly); default: as many as fill --gen-length")  # fmt: skip
    add("--gate-tasks", nargs="+", choices=[*TASK_SEED, "vt_trained"], default=["kv"],
        help="tasks whose answers must all pass --threshold to double (vt_trained: "
             "the curriculum's own vt chains)")  # fmt: skip
    add("--final-threshold", type=float, default=0.95, help="stop at the last stage")
    add("--eval-every", type=int, default=100)
    add("--eval-samples", type=int, default=64, help="held-out prompts per check")
    add("--final-samples", type=int, default=128, help="held-out prompts at the end")
    add("--report-lengths", type=int, nargs="+", default=[256, 1024, 2048])
    add("--vt-fraction", type=float, default=0.0, help="share of vt sequences")
    add("--needle-fraction", type=float, default=0.0,
        help="share of needle (passkey / multi-needle) sequences")  # fmt: skip
    add("--pretrain-fraction", type=float, default=0.0,
        help="share of sequences under LLaDA's pretraining objective (random "
             "masking over the whole sequence, prompt included)")  # fmt: skip
    add("--pretrain-tasks", nargs="+", default=None, choices=list(TASK_SEED),
        help="tasks whose rows may take the pretraining objective (default: "
             "every task)")  # fmt: skip
    add("--blind-prompt", type=float, default=0.0,
        help="share of rows whose prompt queries see no canvas key (with --arch "
             "dream the last prompt token must then find the answer's first "
             "token in the prompt)")  # fmt: skip
    add("--blind-canvas", type=float, default=0.0,
        help=f"share of rows whose canvas queries see only the prompt's last "
             f"{CANVAS_WINDOW} tokens (SnapKV's window), so those tokens must "
             "look the answer up for it")  # fmt: skip
    add("--vt-from", type=int, default=256, help="vt joins from this stage length")
    add("--kv-var-keys", type=float, default=0.0,
        help="share of kv prompts whose records are keyed by vt's variable names "
             "(checked as kv_var)")  # fmt: skip
    add("--hop-aux", type=float, default=0.0,
        help="weight of probe losses reading a resolved vt question's lookups "
             "(its name's right-hand side, then that one's, ...) off the blocks "
             "of --hop-aux-layer at the name (0: off; heads not saved)")  # fmt: skip
    add("--hop-aux-records", action="store_true",
        help="--hop-aux also reads each statement's right-hand name (xB in "
             "xC = xB ;) for its lookups: the chain resolved in place")  # fmt: skip
    add("--hop-aux-layer", type=int, nargs="+", default=[2],
        help="blocks (0-based, rising) whose outputs --hop-aux reads, the k-th "
             "what the question's first k lookups find")  # fmt: skip
    add("--init", default=None, help="continue from this checkpoint")
    a = ap.parse_args(argv)
    if not 0.0 <= a.recall_free <= 1.0:
        ap.error(f"--recall-free {a.recall_free} must be within [0, 1]")
    for flag in ("blind_prompt", "blind_canvas"):
        if not 0.0 <= getattr(a, flag) <= 1.0:
            ap.error(f"--{flag.replace('_', '-')} {getattr(a, flag)} must be within "
                     "[0, 1]")  # fmt: skip
    if a.hop_aux_records and a.hop_aux <= 0:
        ap.error(f"--hop-aux-records needs --hop-aux > 0; got --hop-aux {a.hop_aux}")
    if "vt_trained" in a.gate_tasks and not (
        a.vt_fraction > 0 and is_curriculum(vt_of(a))
    ):
        ap.error(
            "--gate-tasks vt_trained needs a vt curriculum (--vt-fraction > 0 and "
            "--vt-hops or --vt-chains other than the task's own); got --vt-fraction "
            f"{a.vt_fraction}, --vt-hops {a.vt_hops}, --vt-chains {a.vt_chains}"
        )
    return a


def main(argv: list[str] | None = None) -> Run:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
