"""Strict loading of safetensors checkpoints (single file or sharded), the model
class chosen by ``config.json``'s ``model_type``: LLaDA or Dream."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from maskkv_vllm.models.config_json import read_config_json
from maskkv_vllm.models.dream import DreamModel
from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.llada_config import LLaDAConfig

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Architecture:
    """What the loader needs to know of one ``model_type``."""

    config_cls: type[LLaDAConfig] | type[DreamConfig]
    """Parses and validates config.json (``from_dict``)."""
    model_cls: type[LLaDAModel] | type[DreamModel]
    """Built as ``model_cls(config, rope_scaling=...)``."""
    layer_prefix: str
    """Tensor-name prefix followed by the layer index."""
    layers_field: str
    """config.json's name for the layer count (named in errors)."""


ARCHITECTURES: dict[str, Architecture] = {
    "llada": Architecture(
        LLaDAConfig, LLaDAModel, "model.transformer.blocks.", "n_layers"
    ),
    "Dream": Architecture(
        DreamConfig, DreamModel, "model.layers.", "num_hidden_layers"
    ),
}
"""Supported ``model_type`` values, spelled as the checkpoints spell them."""
DEFAULT_MODEL_TYPE = "llada"
"""Assumed when config.json has no ``model_type`` (early LLaDA configs)."""


def architecture_of(raw: dict[str, Any]) -> Architecture:
    """The architecture config.json's ``model_type`` names, or ValueError naming it
    and the supported ones."""
    model_type = raw.get("model_type", DEFAULT_MODEL_TYPE)
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise ValueError(
            f"config.json: model_type={model_type!r} is not supported "
            f"(supported: {', '.join(map(repr, ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map "float32"/"bfloat16"/... (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that this machine has, or ValueError naming the value."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device: {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but this torch {torch.__version__} sees no CUDA "
                "GPU (torch.cuda.is_available() is False): use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but there are {torch.cuda.device_count()} GPUs"
            )
    return dev


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, validated."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"{index} is not a JSON object: {e}") from e
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map'")
        if not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: every 'weight_map' value must be a file name")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        root = model_dir.resolve()
        for f in files:
            if f.resolve().parent != root:
                raise ValueError(
                    f"{index} names {f.relative_to(model_dir)}, which is not a file "
                    f"directly in {model_dir}"
                )
            if f.suffix != ".safetensors":
                raise ValueError(
                    f"{index} names a non-safetensors weight file: {f.name}"
                )
            if not f.is_file():
                raise FileNotFoundError(f"{index} names {f.name}, which is missing")
        return files
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{model_dir} holds only pickle weights ({', '.join(pickles)}); "
            "pickle files can run code when loaded, so only safetensors are accepted: "
            "convert them with safetensors.torch.save_file"
        )
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}")


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of the given safetensors files; a name in two files is an error."""
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if name in tensors:
                        raise ValueError(
                            f"tensor {name} appears twice (again in {path.name})"
                        )
                    tensors[name] = f.get_tensor(name)
        except ValueError:
            raise
        except Exception as e:  # SafetensorError is not exported; truncated files
            raise ValueError(
                f"{path} is not a readable safetensors file ({type(e).__name__}: {e})"
            ) from e
    return tensors


def check_layer_count(
    config: LLaDAConfig | DreamConfig,
    found: dict[str, torch.Tensor],
    arch: Architecture = ARCHITECTURES[DEFAULT_MODEL_TYPE],
) -> None:
    """Compare the layer count with the layers the weights hold before building
    anything (a config that says a million layers would otherwise build them)."""
    prefix = arch.layer_prefix
    blocks = {n[len(prefix) :].split(".", 1)[0] for n in found if n.startswith(prefix)}
    count = len(blocks)
    if count != config.n_layers:
        raise ValueError(
            f"config.json says {arch.layers_field}={config.n_layers} but the weights "
            f"hold {count} blocks"
        )


def check_state_dict(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> None:
    """Raise naming every missing, unexpected or mis-shaped tensor."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}")
    for name in sorted(expected.keys() & found.keys()):
        want, got = tuple(expected[name].shape), tuple(found[name].shape)
        if want != got:
            problems.append(f"tensor {name} has shape {got}, expected {want}")
    if problems:
        raise ValueError("checkpoint does not match its config: " + "; ".join(problems))


def load_model(
    model_dir: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    rope_scaling: float = 1.0,
) -> LLaDAModel | DreamModel:
    """Load a checkpoint directory into an eval-mode model of its ``model_type``
    (``LLaDAModel`` for "llada", ``DreamModel`` for "Dream").

    Args:
        model_dir: directory with config.json and safetensors weights.
        dtype: "float32" or "bfloat16" (or "float16").
        device: "cpu", "cuda", ...
        rope_scaling: NTK factor applied to ``rope_theta``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    raw = read_config_json(model_dir / "config.json")
    arch = architecture_of(raw)
    config = arch.config_cls.from_dict(raw)
    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    found = read_tensors(weight_files(model_dir))
    check_layer_count(config, found, arch)
    with torch.device("meta"):
        model = arch.model_cls(config, rope_scaling=rope_scaling)
    check_state_dict(model.state_dict(), found)
    found = {k: t.to(device=device, dtype=torch_dtype) for k, t in found.items()}
    model.load_state_dict(found, strict=True, assign=True)
    logger.info(
        "loaded %s: %d layers on %s/%s", model_dir, config.n_layers, device, dtype
    )
    return model.eval().requires_grad_(False)


def load_checkpoint(
    model_dir: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    rope_scaling: float = 1.0,
):
    """Model and tokenizer of a checkpoint directory: ``(model, Tokenizer)``, the
    model a ``LLaDAModel`` or ``DreamModel`` by ``model_type``."""
    from maskkv_vllm.models.tokenizer import Tokenizer

    model = load_model(model_dir, dtype=dtype, device=device, rope_scaling=rope_scaling)
    return model, Tokenizer.from_dir(model_dir, model.config)
