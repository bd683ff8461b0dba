"""Many embedded-engine replicas behind one OpenAI-compatible endpoint, with Ray Serve.

Each replica owns one ``LLMEngine`` (one GPU when GPUs exist, else CPU) and serves the
same routes as ``maskkv serve``; Ray Serve routes requests across replicas, restarts a
replica that dies, and autoscales when asked to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from maskkv_vllm.config import EngineConfig
from maskkv_vllm.entrypoints.server_config import ServerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayServeConfig:
    """How the replicas are deployed."""

    num_replicas: int = 2
    """Fixed replica count (ignored when ``autoscaling`` is given)."""
    autoscaling: dict[str, Any] | None = None
    """Ray Serve autoscaling_config, e.g. {"min_replicas": 1, "max_replicas": 4}."""
    max_ongoing_requests: int = 64
    """Requests Ray Serve sends to one replica at once (the engine queues the rest)."""
    gpus_per_replica: float | None = None
    """GPUs per replica; None means 1 when the cluster has GPUs, else 0."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    """Bearer token on /v1 (default: $MASKKV_API_KEY)."""
    model_name: str = "tiny"
    max_request_bytes: int = 8 * 2**20
    """Larger request bodies get 413."""
    allowed_hosts: tuple[str, ...] | None = None
    """Host names answered; None: the loopback names on a loopback host, else any."""

    def server(self) -> ServerConfig:
        """The front-end settings every replica applies."""
        extra = (
            {} if self.allowed_hosts is None else {"allowed_hosts": self.allowed_hosts}
        )
        return ServerConfig.for_bind(
            self.host,
            model_name=self.model_name,
            api_key=self.api_key,
            max_request_bytes=self.max_request_bytes,
            **extra,
        )

    def __post_init__(self) -> None:
        if self.autoscaling is None and (
            not isinstance(self.num_replicas, int) or self.num_replicas <= 0
        ):
            raise ValueError(f"num_replicas={self.num_replicas!r} must be positive")
        if self.max_ongoing_requests <= 0:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} must be positive"
            )


def _engine_replica_class():
    from ray import serve

    @serve.ingress()
    class EngineReplica:
        """One engine and its FastAPI app, inside a Ray Serve replica."""

        def __init__(self, engine_config: EngineConfig, server: ServerConfig):
            from maskkv_vllm.engine.llm_engine import LLMEngine

            config = engine_config
            if config.device == "cpu" and _has_cuda():
                config = dataclasses.replace(config, device="cuda")
            self.engine = LLMEngine(config)
            replica_id = f"{os.uname().nodename}:{os.getpid()}"
            self.server = dataclasses.replace(server, replica_id=replica_id)

        def __serve_build_asgi_app__(self):
            from maskkv_vllm.entrypoints.openai_server import build_app

            app = build_app(self.engine, self.server)
            app.state.runner.start()  # idempotent; Serve may skip the lifespan
            return app

    return EngineReplica


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_deployment(engine_config: EngineConfig, cfg: RayServeConfig):
    """The bound Ray Serve application (pass it to ``serve.run``)."""
    import ray
    from ray import serve

    gpus = cfg.gpus_per_replica
    if gpus is None:
        gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU") else 0
    options: dict[str, Any] = {
        "name": "maskkv",
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_gpus": gpus, "num_cpus": 0 if gpus else 1},
    }
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling
    else:
        options["num_replicas"] = cfg.num_replicas
    deployment = serve.deployment(**options)(_engine_replica_class())
    return deployment.bind(engine_config, cfg.server())


def run(
    engine_config: EngineConfig, cfg: RayServeConfig, address: str | None = None
) -> None:
    """Start (or join) Ray, deploy the replicas, and serve until Ctrl-C or SIGTERM."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    ray.init(address=address, ignore_reinit_error=True)
    # After ray.init, whose SIGTERM handler dumps a stack trace and aborts:
    # `kill PID` stops the replicas as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        app = build_deployment(engine_config, cfg)
        serve.run(app, name="maskkv", route_prefix="/")
        logger.info("serving %s on http://%s:%d", cfg.model_name, cfg.host, cfg.port)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping the replicas")
    finally:
        with contextlib.suppress(RayServeException):  # raised if Serve never started
            serve.delete("maskkv")
        ray.shutdown()
