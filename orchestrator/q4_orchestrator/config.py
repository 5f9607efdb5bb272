"""The orchestrator's configuration: environment variables set by Terraform (docs/contract.md,
docs/infrastructure.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from q4_contract import DEFAULT_CONTAINER_NAME, SizeLimits
from q4_contract.shards import ShardLimits

DEFAULT_MAX_ATTEMPTS = 3


class ConfigurationError(RuntimeError):
    """A required environment variable of the Lambda is missing or invalid."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _integers(env: Mapping[str, str], names: Mapping[str, str]) -> dict[str, int]:
    """``{attribute: int}`` of the variables ``names`` (attribute -> variable) that are set; unset ones are
    left out (the dataclass's defaults apply)."""
    values: dict[str, int] = {}
    for attribute, name in names.items():
        text = env.get(name, "").strip()
        if text:
            try:
                values[attribute] = int(text)
            except ValueError:
                raise ConfigurationError(f"{name} is not an integer; set it to a whole number.") from None
    return values


#: The task size limits' variables (Terraform sets them; unset: :class:`SizeLimits`'s defaults).
SIZE_LIMIT_ENV = {
    "cpu_min": "Q4_TASK_CPU_MIN",
    "cpu_max": "Q4_TASK_CPU_MAX",
    "memory_per_vcpu": "Q4_TASK_MEMORY_PER_VCPU",
    "ephemeral_min_gib": "Q4_TASK_STORAGE_MIN_GIB",
    "ephemeral_max_gib": "Q4_TASK_STORAGE_MAX_GIB",
}


def size_limits_from_env(env: Mapping[str, str]) -> SizeLimits:
    """The deployment's task size limits (docs/contract.md, "Task size")."""
    limits = SizeLimits(**_integers(env, SIZE_LIMIT_ENV))
    problem = limits.problem()
    if problem is not None:
        raise ConfigurationError(
            f"The task size limits ({', '.join(SIZE_LIMIT_ENV.values())}) are wrong: {problem}."
        )
    return limits


#: The sharding settings' variables (Terraform ``shard_target_bytes``, ``max_shards``; unset: the defaults).
SHARD_LIMIT_ENV = {"target_bytes": "Q4_SHARD_TARGET_BYTES", "max_shards": "Q4_MAX_SHARDS"}


def shard_limits_from_env(env: Mapping[str, str]) -> ShardLimits:
    """The deployment's sharding settings (docs/contract.md, "Sharded runs")."""
    limits = ShardLimits(**_integers(env, SHARD_LIMIT_ENV))
    problem = limits.problem()
    if problem is not None:
        raise ConfigurationError(
            f"The sharding settings ({', '.join(SHARD_LIMIT_ENV.values())}) are wrong: {problem}; fix the "
            "Terraform variables shard_target_bytes and max_shards."
        )
    return limits


@dataclass(frozen=True)
class OrchestratorConfig:
    archive_bucket: str
    artifacts_bucket: str
    done_queue_url: str
    cluster: str
    task_definition: str
    container_name: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: str
    max_attempts: int
    size_limits: SizeLimits = field(default_factory=SizeLimits)
    shard_limits: ShardLimits = field(default_factory=ShardLimits)
    #: the task definition's runtimePlatform (prices a crashed run when its STOPPED event names none)
    task_cpu_architecture: str = "X86_64"
    #: price runs as if they ran in this region (the local stack's region is a stand-in); None: their own
    price_region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OrchestratorConfig:
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigurationError(
                    f"{name} is not set; the orchestrator's Terraform configuration must set it."
                )
            return value

        assign = env.get("Q4_ASSIGN_PUBLIC_IP", "DISABLED").strip().upper() or "DISABLED"
        if assign not in ("ENABLED", "DISABLED"):
            raise ConfigurationError(f"Q4_ASSIGN_PUBLIC_IP is {assign!r}; set it to ENABLED or DISABLED.")
        try:
            max_attempts = int(env.get("Q4_MAX_ATTEMPTS", "") or DEFAULT_MAX_ATTEMPTS)
        except ValueError:
            raise ConfigurationError("Q4_MAX_ATTEMPTS is not an integer; set it to 1 or more.") from None
        if max_attempts < 1:
            raise ConfigurationError("Q4_MAX_ATTEMPTS is below 1; set it to 1 or more.")
        return cls(
            archive_bucket=required("Q4_ARCHIVE_BUCKET"),
            artifacts_bucket=required("Q4_ARTIFACTS_BUCKET"),
            done_queue_url=required("Q4_DONE_QUEUE_URL"),
            cluster=required("Q4_CLUSTER"),
            task_definition=required("Q4_TASK_DEFINITION"),
            container_name=env.get("Q4_CONTAINER_NAME", "").strip() or DEFAULT_CONTAINER_NAME,
            subnets=_split(required("Q4_SUBNETS")),
            security_groups=_split(env.get("Q4_SECURITY_GROUPS", "")),
            assign_public_ip=assign,
            max_attempts=max_attempts,
            size_limits=size_limits_from_env(env),
            shard_limits=shard_limits_from_env(env),
            task_cpu_architecture=env.get("Q4_TASK_ARCHITECTURE", "").strip().upper() or "X86_64",
            price_region=env.get("Q4_PRICE_REGION", "").strip() or None,
        )

    @property
    def cluster_name(self) -> str:
        """The cluster's short name (``Q4_CLUSTER`` may be a name or an ARN)."""
        return self.cluster.rsplit("/", 1)[-1]
