"""Fast-dLLM's prefix and dual cache, timed from a user's checkout beside ours.

Their code is not vendored: ``maskkv bench --peer-fast-dllm PATH`` imports
``llada/generate.py`` (and through it ``llada/model/modeling_llada.py``) from a
checkout of NVlabs/Fast-dLLM, loads the bench's own checkpoint with their
``LLaDAModelLM`` and runs their ``generate_with_prefix_cache`` and
``generate_with_dual_cache`` unmodified on the bench's prompts. A thin proxy around
their model times each forward: a forward without ``past_key_values`` is a full
one (the prefill, and their cache refresh at each block start), one with it is a
cached denoising step. Their code needs ``transformers`` (their pin: 4.49.0) and
``einops``; the lane is skipped without ``--peer-fast-dllm``.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from maskkv_vllm.bench.common import sync

_FUNCTIONS = {
    "prefix": "generate_with_prefix_cache",
    "dual": "generate_with_dual_cache",
}
"""Fast-dLLM's two caches: the prompt and finished blocks (``prefix``), or also
the blocks after the current one (``dual``), by the function that runs each."""
PEER_MODES = tuple(_FUNCTIONS)


def find_checkout(path: str | Path) -> Path:
    """The folder holding Fast-dLLM's LLaDA ``generate.py`` and ``model/``.

    Args:
        path: a Fast-dLLM checkout, or its ``llada`` folder.
    """
    root = Path(path).expanduser()
    for folder in (root / "llada", root):
        if (folder / "generate.py").is_file() and (folder / "model").is_dir():
            return folder
    raise ValueError(
        f"--peer-fast-dllm {path}: no llada/generate.py and llada/model/ there; "
        "pass a checkout of https://github.com/NVlabs/Fast-dLLM (or its llada folder)"
    )


class PeerCode:
    """Fast-dLLM's generate functions and model class, imported from a checkout.

    Their ``generate.py`` imports ``model.modeling_llada`` as a top-level package,
    so the checkout's folder sits on ``sys.path`` only while it is imported, and
    the ``model`` package it adds is taken out of ``sys.modules`` afterwards (the
    functions keep their own references).
    """

    def __init__(self, path: str | Path) -> None:
        folder = find_checkout(path)
        before = set(sys.modules)
        sys.path.insert(0, str(folder))
        try:
            spec = importlib.util.spec_from_file_location(
                "_fast_dllm_generate", folder / "generate.py"
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.model_class = sys.modules["model.modeling_llada"].LLaDAModelLM
        except ModuleNotFoundError as e:
            raise RuntimeError(
                f"--peer-fast-dllm {path}: Fast-dLLM's code imports {e.name!r}, "
                "which is not installed here: pip install 'maskkv-vllm[peer]' "
                "(their pins: transformers==4.49.0, einops)"
            ) from e
        finally:
            sys.path.remove(str(folder))
            for name in set(sys.modules) - before:
                if name == "model" or name.startswith("model."):
                    del sys.modules[name]
        self.generate = {mode: getattr(module, fn) for mode, fn in _FUNCTIONS.items()}

    def load(self, checkpoint: str | Path, device: str = "cpu"):
        """Their ``LLaDAModelLM`` on our checkpoint (fp32, eval mode)."""
        model = self.model_class.from_pretrained(
            str(checkpoint), torch_dtype=torch.float32
        )
        return model.to(device).eval()


class TimedModel:
    """Their model behind a proxy that times each call.

    Attributes:
        calls: per forward, (seconds, cached) where cached means it was given
            ``past_key_values`` (a denoising step on their cache).
    """

    def __init__(self, model, device: str) -> None:
        self._model, self._device = model, device
        self.calls: list[tuple[float, bool]] = []

    def __call__(self, *args, **kwargs):
        sync(self._device)
        start = time.perf_counter()
        out = self._model(*args, **kwargs)
        sync(self._device)
        cached = kwargs.get("past_key_values") is not None
        self.calls.append((time.perf_counter() - start, cached))
        return out

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def peer_run(
    code: PeerCode,
    model,
    mode: str,
    prompt_ids: list[int],
    gen: int,
    block: int,
    mask_id: int,
    device: str = "cpu",
) -> dict:
    """One generation with their ``mode`` cache, one token per step.

    Returns:
        first_ms (the first full forward), step_ms (median cached step),
        refresh_ms (median later full forward, None with one block),
        mean_step_ms (every forward after the first, refreshes included),
        total_ms, forwards (their NFE), tokens (the generated ids).
    """
    timed = TimedModel(model, device)
    prompt = torch.tensor([prompt_ids], device=device)
    start = time.perf_counter()
    x, nfe = code.generate[mode](
        timed, prompt, steps=gen, gen_length=gen, block_length=block,
        temperature=0.0, mask_id=mask_id,
    )  # fmt: skip
    total = time.perf_counter() - start
    full = [t for t, cached in timed.calls if not cached]
    steps = [t for t, cached in timed.calls if cached]
    return {
        "first_ms": 1e3 * full[0],
        "step_ms": 1e3 * statistics.median(steps) if steps else None,
        "refresh_ms": 1e3 * statistics.median(full[1:]) if full[1:] else None,
        "mean_step_ms": 1e3 * statistics.mean(t for t, _ in timed.calls[1:]),
        "total_ms": 1e3 * total,
        "forwards": int(nfe),
        "tokens": x[0, len(prompt_ids) :].tolist(),
    }
