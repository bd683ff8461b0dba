"""``maskkv serve`` on Ray Serve: replicas, a cluster address, autoscaling."""

from __future__ import annotations

import argparse
import json


def add_ray_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--replicas", type=int, default=0, help="Ray Serve replicas (needs ray)"
    )
    serve.add_argument("--ray-address", default=None, help="join this Ray cluster")
    serve.add_argument("--autoscaling", default=None, help="Ray autoscaling JSON")
    serve.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=64,
        help="Ray Serve: requests sent to one replica at once",
    )


def serve_on_ray(
    args: argparse.Namespace, config, name: str, hosts: tuple[str, ...] | None
) -> int:
    """Serve ``config`` on Ray; ``hosts``: ``--allowed-hosts`` split, or None."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError(
            "--replicas, --ray-address and --autoscaling need Ray: "
            "pip install 'maskkv-vllm[ray]'"
        )
    from maskkv_vllm.distributed.ray_serve import RayServeConfig, run

    autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
    cfg = RayServeConfig(
        num_replicas=args.replicas or 1,
        autoscaling=autoscaling,
        max_ongoing_requests=args.max_ongoing_requests,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        model_name=name,
        max_request_bytes=args.max_request_bytes,
        allowed_hosts=hosts,
    )
    run(config, cfg, address=args.ray_address)
    return 0
