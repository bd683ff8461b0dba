"""Small random LLaDA- or Dream-shaped models and long English prompts for the
benchmarks."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import torch

from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny import write_tiny_checkpoint
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint
from maskkv_vllm.models.tokenizer import Tokenizer
from maskkv_vllm.sampler.sequence import DiffusionSequence
from maskkv_vllm.worker.model_runner import ModelRunner


@dataclass(frozen=True)
class ModelSize:
    """Sizes of a random benchmark model; the vocabulary is always the 262-token
    byte tokenizer (it changes neither the KV bytes nor the attention cost)."""

    layers: int = 4
    heads: int = 8
    """Query heads per layer."""
    head_dim: int = 64
    kv_heads: int | None = None
    """Key/value heads per layer; None: one per query head."""
    intermediate: int | None = None
    """MLP inner width; None: the tiny writers' default, 2 x hidden."""
    arch: str = "llada"
    """``llada`` or ``dream`` (Dream: shifted logits, q/k/v biases, RoPE 1e6)."""


def bench_checkpoint(size: ModelSize, max_len: int, directory: str | Path) -> Path:
    """Random weights (seed 0) written as a real LLaDA or Dream checkpoint under
    ``directory``; returns its folder."""
    shape = {
        "n_layers": size.layers,
        "n_heads": size.heads,
        "n_kv_heads": size.kv_heads or size.heads,
        "head_dim": size.head_dim,
    }
    if size.arch == "dream":
        return write_tiny_dream_checkpoint(
            directory, intermediate_size=size.intermediate,
            max_position_embeddings=max_len, **shape,
        )  # fmt: skip
    if size.arch != "llada":
        raise ValueError(f"arch={size.arch!r}: expected 'llada' or 'dream'")
    return write_tiny_checkpoint(
        directory, mlp_hidden_size=size.intermediate,
        max_sequence_length=max_len, **shape,
    )  # fmt: skip


def bench_model(
    size: ModelSize, max_len: int, device: str = "cpu", dtype: str = "float32"
) -> tuple[LLaDAModel, Tokenizer]:
    """Random weights written as a real checkpoint and loaded like one."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_checkpoint(bench_checkpoint(size, max_len, tmp), dtype, device)


_ENGLISH: dict[int, list[int]] = {}


def english_ids(tok: Tokenizer, num_tokens: int, offset: int = 0) -> list[int]:
    """``num_tokens`` token ids of CPython's pydoc topics (repeated if needed)."""
    if id(tok) not in _ENGLISH:
        _ENGLISH[id(tok)] = tok.encode(" ".join(topics.values())[:400_000])
    ids = _ENGLISH[id(tok)]
    while len(ids) < offset + num_tokens:
        ids = ids + ids
    return ids[offset : offset + num_tokens]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(
    sampler: ModelRunner, seq: DiffusionSequence, device: str
) -> list[float]:
    """Seconds of every denoising step of one sequence, run to completion."""
    times = []
    try:
        while not seq.is_finished:
            sync(device)
            start = time.perf_counter()
            sampler.step([seq])
            sync(device)
            times.append(time.perf_counter() - start)
    finally:
        sampler.free(seq)
    return times


def lockstep_times(
    samplers: dict[str, ModelRunner],
    seqs: dict[str, DiffusionSequence],
    device: str,
) -> dict[str, list[float]]:
    """Seconds of every step of each label's sequence, the labels taking one step
    each in turn: a change of machine load falls on every label alike, so their
    ratios hold on a shared machine where back-to-back runs drift apart."""
    times: dict[str, list[float]] = {label: [] for label in seqs}
    try:
        while not all(seq.is_finished for seq in seqs.values()):
            for label, seq in seqs.items():
                if seq.is_finished:
                    continue
                sync(device)
                start = time.perf_counter()
                samplers[label].step([seq])
                sync(device)
                times[label].append(time.perf_counter() - start)
    finally:
        for label, seq in seqs.items():
            samplers[label].free(seq)
    return times


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)
