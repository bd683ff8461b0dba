"""``maskkv serve``: the OpenAI-compatible server over the embedded engine."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli.command import add_command
from maskkv_vllm.cli.serve_ray import add_ray_args, serve_on_ray
from maskkv_vllm.engine.engine_args import EngineArgs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = add_command(
        subparsers, "serve", "OpenAI-compatible server over the embedded engine"
    )
    serve.add_argument(
        "model", nargs="?", default="tiny", help="checkpoint directory or built-in name"
    )
    EngineArgs.add_cli_args(serve, model=False)
    add_server_args(serve)
    add_ray_args(serve)
    serve.set_defaults(func=cmd_serve)


def add_server_args(serve: argparse.ArgumentParser) -> None:
    """The HTTP server's flags: bind address, auth, limits, names, logging."""
    serve.add_argument("--host", default="127.0.0.1", help="bind address")
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require Bearer auth on /v1 (default: $MASKKV_API_KEY, which `ps` "
        "does not show)",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=8 * 2**20,
        help="larger request bodies get 413",
    )
    serve.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names to answer, '*' for any (default: the "
        "loopback names on a loopback --host, else any)",
    )
    serve.add_argument(
        "--served-model-name", default=None, help="name in /v1 (default: the model)"
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server and engine log level",
    )


def port_number(value: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port in 0..65535")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.entrypoints.openai_server import build_app

    logging_setup(args.log_level)
    config = EngineArgs.from_cli_args(args).create_engine_config()
    name = args.served_model_name or args.model
    hosts = split_hosts(args.allowed_hosts)
    if args.replicas or args.ray_address or args.autoscaling:
        return serve_on_ray(args, config, name, hosts)
    server = server_config(args, name, hosts)
    engine = LLMEngine(config)
    app = build_app(engine, server)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def logging_setup(level: str) -> None:
    """Our loggers print beside uvicorn's (which configures only its own)."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s")
    )
    root = logging.getLogger("maskkv_vllm")
    root.addHandler(handler)
    root.setLevel(level.upper())


def split_hosts(value: str | None) -> tuple[str, ...] | None:
    """``--allowed-hosts`` as a tuple of names; None when not given."""
    if value is None:
        return None
    return tuple(h.strip() for h in value.split(","))


def server_config(args: argparse.Namespace, name: str, hosts: tuple[str, ...] | None):
    from maskkv_vllm.entrypoints.server_config import ServerConfig

    kwargs = {} if hosts is None else {"allowed_hosts": hosts}
    return ServerConfig.for_bind(
        args.host,
        model_name=name,
        api_key=args.api_key,
        max_request_bytes=args.max_request_bytes,
        **kwargs,
    )
