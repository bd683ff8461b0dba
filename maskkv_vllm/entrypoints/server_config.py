"""What the HTTP front end accepts: auth, body size, Host names (frozen, validated)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

API_KEY_ENV = "MASKKV_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerConfig:
    """One server's front-end settings."""

    model_name: str = "tiny"
    """The one model name /v1 answers to; another name is a 404 (as vLLM)."""
    api_key: str | None = None
    """Bearer token required on /v1; None leaves /v1 open."""
    max_request_bytes: int = 8 * 2**20
    """Largest request body; a larger one is refused with 413 before it is read."""
    allowed_hosts: tuple[str, ...] | None = None
    """Host header names accepted (no port); None or ``"*"`` accepts any. A
    loopback bind defaults to the loopback names, so a web page cannot reach the
    server through a rebound DNS name."""
    replica_id: str | None = None
    """Returned in an ``x-maskkv-replica`` header (Ray Serve)."""
    stats_interval: float = 10.0
    """Seconds between the engine-state lines of the log (while busy)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name={self.model_name!r} must be a non-empty str")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (None leaves /v1 open)")
        size = self.max_request_bytes
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"max_request_bytes={size!r} must be a positive integer")
        if not self.stats_interval > 0:
            raise ValueError(f"stats_interval={self.stats_interval} must be positive")
        if self.allowed_hosts is not None and not all(
            isinstance(h, str) and h for h in self.allowed_hosts
        ):
            raise ValueError(f"allowed_hosts={self.allowed_hosts!r} must be names")

    @classmethod
    def for_bind(cls, host: str, **kwargs) -> ServerConfig:
        """Defaults for a server bound to ``host``: the API key from
        ``$MASKKV_API_KEY`` when not given, loopback names only on a loopback bind."""
        if kwargs.get("api_key") is None:
            kwargs["api_key"] = os.environ.get(API_KEY_ENV) or None
        if "allowed_hosts" not in kwargs and is_loopback(host):
            kwargs["allowed_hosts"] = LOOPBACK_NAMES
        return cls(**kwargs)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header value, without its port: ``[::1]:80`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
