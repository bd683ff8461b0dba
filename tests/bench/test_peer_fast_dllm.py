"""The Fast-dLLM peer lane, against a stand-in checkout with their layout and
call signatures (their real code needs transformers; the committed run used it)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from maskkv_vllm.bench import suite
from maskkv_vllm.bench.peer_fast_dllm import PeerCode, find_checkout, peer_run
from maskkv_vllm.cli import main

# Their layout: llada/generate.py imports ``model.modeling_llada`` (a top-level
# package beside it) and calls the model as model(x, use_cache=True) for a full
# forward and model(x[:, start:], past_key_values=..., use_cache=True) for a step.
_MODELING = """
import types
import torch
from maskkv_vllm.models.attention import DenseAttention
from maskkv_vllm.models.loader import load_model


class LLaDAModelLM:
    def __init__(self, inner):
        self.inner, self.device = inner, torch.device("cpu")

    @classmethod
    def from_pretrained(cls, path, torch_dtype=None):
        return cls(load_model(path))

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x, past_key_values=None, use_cache=False):
        pos = torch.arange(x.shape[1])[None]
        hidden = self.inner(x, pos, DenseAttention(torch.ones_like(x, dtype=bool)))
        logits = self.inner.logits(hidden)
        return types.SimpleNamespace(logits=logits, past_key_values=1)
"""
_GENERATE = """
import torch
from model.modeling_llada import LLaDAModelLM  # noqa: F401 (their import)


def _loop(model, prompt, steps, gen_length, block_length, mask_id):
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    nfe = 0
    for b in range(gen_length // block_length):
        start = prompt.shape[1] + b * block_length
        out = model(x, use_cache=True)
        for i in range(block_length):
            if i:
                out = model(x[:, start:], past_key_values=out.past_key_values,
                            use_cache=True)
                logits = out.logits[0, i]
            else:
                logits = out.logits[0, start + i]
            x[0, start + i] = logits.argmax()
            nfe += 1
    return x, nfe


def generate_with_prefix_cache(model, prompt, steps=128, gen_length=128,
                               block_length=128, temperature=0.0,
                               remasking="low_confidence", mask_id=126336,
                               threshold=None):
    return _loop(model, prompt, steps, gen_length, block_length, mask_id)


generate_with_dual_cache = generate_with_prefix_cache
"""


@pytest.fixture
def checkout(tmp_path):
    llada = tmp_path / "Fast-dLLM" / "llada"
    (llada / "model").mkdir(parents=True)
    (llada / "model" / "__init__.py").write_text("")
    (llada / "model" / "modeling_llada.py").write_text(textwrap.dedent(_MODELING))
    (llada / "generate.py").write_text(textwrap.dedent(_GENERATE))
    return tmp_path / "Fast-dLLM"


def test_their_forwards_are_split_into_full_ones_and_cached_steps(checkout, tiny_dir):
    code = PeerCode(checkout)
    assert "model" not in sys.modules  # their top-level package is not left behind
    model = code.load(tiny_dir)
    out = peer_run(code, model, "prefix", [10, 11, 12, 13], gen=8, block=4, mask_id=261)
    assert out["forwards"] == 8  # 2 blocks x 4 steps, one token each
    assert len(out["tokens"]) == 8 and 261 not in out["tokens"]
    # 2 full forwards (the first, one refresh at block 2) and 6 cached steps.
    assert out["first_ms"] > 0 and out["refresh_ms"] > 0 and out["step_ms"] > 0
    assert out["total_ms"] >= out["first_ms"] + out["refresh_ms"]


def test_the_checkout_or_its_llada_folder_is_accepted(checkout):
    assert find_checkout(checkout) == checkout / "llada"
    assert find_checkout(checkout / "llada") == checkout / "llada"


def test_a_path_without_their_code_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=f"--peer-fast-dllm {tmp_path}: no llada"):
        find_checkout(tmp_path)


def test_a_missing_dependency_of_their_code_is_named(checkout):
    gen = checkout / "llada" / "generate.py"
    gen.write_text("import einops_not_installed_here\n" + gen.read_text())
    with pytest.raises(RuntimeError, match="imports 'einops_not_installed_here'"):
        PeerCode(checkout)
    assert "model" not in sys.modules


def test_maskkv_bench_refuses_a_bad_peer_path_before_running(tmp_path, capsys):
    assert main(["bench", "--quick", "--peer-fast-dllm", str(tmp_path / "nope"),
                 "--out-dir", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "--peer-fast-dllm" in capsys.readouterr().err
    assert not (tmp_path / "out" / "bench.json").exists()


def test_the_peer_table_prints_our_over_their_ratios():
    def run(step, total, tokens):
        return {"step_ms": step, "total_ms": total, "tokens": tokens}

    row = {
        "prompt_len": 1024,
        "peer_prefix": run(20.0, 900.0, [1, 2, 3, 4]),
        "peer_dual": run(10.0, 800.0, [1, 2, 3, 4]),
        "ours_prefix": run(18.0, 700.0, [1, 2, 9, 4]),
        "ours_maskkv": run(5.0, 400.0, [1, 2, 3, 4]),
    }
    lines = suite.peer_report(
        {"path": "/x", "commit": "abc", "rows": [row]}, {"gen_length": 4}
    )
    assert "commit abc" in lines[0]
    cells = [c.strip() for c in lines[-1].split("|")]
    assert cells == ["1024", "20.00", "10.00", "18.00", "5.00", "0.90x", "0.50x",
                     "2.0x", "3/4"]  # fmt: skip
    # With the canvas cache: their dual cache against our dual_refresh (same
    # schedule, the tokens must agree) and MaskKV + dual, mean ms a step.
    row["peer_dual"]["mean_step_ms"] = 12.0
    row["ours_dual_refresh"] = {"mean_step_ms": 11.0, "tokens": [1, 2, 3, 4]}
    row["ours_maskkv_dual"] = {"mean_step_ms": 6.0, "tokens": [1, 2, 3, 5]}
    lines = suite.peer_report(
        {"path": "/x", "commit": "abc", "rows": [row]}, {"gen_length": 4}
    )
    cells = [c.strip() for c in lines[-1].split("|")]
    assert cells == ["1024", "12.00", "11.00", "6.00", "0.50x", "4/4"]
