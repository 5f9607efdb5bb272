"""The task's size per run: Fargate's CPU and memory combinations, the deployment's limits and the sizing rule
(docs/contract.md, "Task size").

The orchestrator sizes every attempt it launches with RunTask task-level overrides (``cpu``, ``memory``,
``ephemeralStorage.sizeInGiB``): a work message's ``task_cpu`` when it names one, else :func:`size_for`'s rule
from the input's size. The rule, stated:

- CPU: one vCPU per :data:`INPUT_BYTES_PER_VCPU` of input, rounded up to a Fargate CPU step, within the
  deployment's ``cpu_min``-``cpu_max``. The computation streams the input in chunks of fixed rows, so its
  memory does not grow with the input; more input is more chunks, and more vCPUs work them faster.
- Memory: follows the CPU only: ``memory_per_vcpu`` MiB per vCPU, fitted to the combinations Fargate allows
  for that CPU (:data:`FARGATE_MEMORY_MIB`).
- Ephemeral storage: the task streams its inputs from S3 and its row outputs to S3, so the scratch volume
  holds only the spill of a CSV input's parsed chunks (its text columns plus the parsed feature values,
  about :data:`SCRATCH_PER_INPUT_BYTE` times the input; without room for it pass 2 parses the input again,
  slower but not failing), on top of Fargate's default
  :data:`EPHEMERAL_BASE_GIB` (the image, the system); rounded up to a GiB, within the deployment's
  ``ephemeral_min_gib``-``ephemeral_max_gib`` (Fargate allows 21-200 GiB as an override).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from q4_contract.errors import Rejection

GIB = 1024**3
#: The CPU units Fargate offers (a work message's ``task_cpu`` must be one of them).
FARGATE_CPU_STEPS = (256, 512, 1024, 2048, 4096, 8192, 16384)
#: The task memory (MiB) Fargate allows with each CPU step (Linux, platform 1.4.0).
FARGATE_MEMORY_MIB: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}
#: Ephemeral storage Fargate accepts as a RunTask override, GiB (without one a task gets 20 GiB).
EPHEMERAL_RANGE_GIB = (21, 200)
EPHEMERAL_BASE_GIB = 20
#: The sizing rule's two constants (see the module's docstring).
INPUT_BYTES_PER_VCPU = 2 * GIB
SCRATCH_PER_INPUT_BYTE = 2
#: How a size was chosen (MANIFEST.json ``compute.sized_by``).
SIZED_BY_REQUEST = "requested"
SIZED_BY_INPUT = "input_bytes"


def check_task_cpu(task_cpu: int, run_id: str | None = None) -> int:
    """``task_cpu`` of a work message: one of Fargate's CPU steps, else ``invalid_task_cpu``."""
    if task_cpu not in FARGATE_CPU_STEPS:
        raise Rejection(
            "invalid_task_cpu",
            f"'task_cpu' is {task_cpu}; use one of Fargate's CPU steps "
            f"{', '.join(str(step) for step in FARGATE_CPU_STEPS)}.",
            run_id,
        )
    return task_cpu


def fargate_memory(cpu: int, memory_per_vcpu: int) -> int:
    """``memory_per_vcpu`` MiB per vCPU of ``cpu`` units, fitted to a memory Fargate allows with ``cpu``: the
    smallest allowed value at least that much, else the largest allowed."""
    wanted = cpu * memory_per_vcpu // 1024
    allowed = FARGATE_MEMORY_MIB[cpu]
    return next((memory for memory in allowed if memory >= wanted), allowed[-1])


@dataclass(frozen=True)
class TaskSize:
    """One attempt's size: CPU units, memory MiB, ephemeral storage GiB, and how it was chosen."""

    cpu: int
    memory: int
    ephemeral_storage_gib: int
    sized_by: str
    input_bytes: int


@dataclass(frozen=True)
class SizeLimits:
    """The deployment's limits (Terraform variables, the orchestrator's ``Q4_TASK_*`` environment)."""

    cpu_min: int = 1024
    cpu_max: int = 4096
    memory_per_vcpu: int = 4096
    ephemeral_min_gib: int = 21
    ephemeral_max_gib: int = 200

    def problem(self) -> str | None:
        """What is wrong with these limits (a sentence), or None."""
        if self.cpu_min not in FARGATE_CPU_STEPS or self.cpu_max not in FARGATE_CPU_STEPS:
            return "the CPU limits must be Fargate CPU steps (256-16384)"
        if self.cpu_min > self.cpu_max:
            return "the CPU minimum is above the maximum"
        if not 512 <= self.memory_per_vcpu <= 8192:
            return "the memory per vCPU must be 512-8192 MiB"
        low, high = EPHEMERAL_RANGE_GIB
        if not low <= self.ephemeral_min_gib <= self.ephemeral_max_gib <= high:
            return f"the ephemeral storage limits must lie in {low}-{high} GiB, minimum first"
        return None

    def check_requested(self, task_cpu: int, run_id: str | None = None) -> int:
        """A work message's ``task_cpu`` within this deployment's limits, else ``task_cpu_not_allowed``."""
        if not self.cpu_min <= task_cpu <= self.cpu_max:
            raise Rejection(
                "task_cpu_not_allowed",
                f"'task_cpu' is {task_cpu}; this deployment runs tasks of {self.cpu_min} to "
                f"{self.cpu_max} CPU units; ask for a size within them, or leave 'task_cpu' out to size the "
                "task to the input.",
                run_id,
            )
        return task_cpu


def size_for(input_bytes: int, limits: SizeLimits, task_cpu: int | None = None) -> TaskSize:
    """The size of a task for ``input_bytes`` of input (the module's rule), or with ``task_cpu`` asked for."""
    input_bytes = max(0, input_bytes)
    if task_cpu is not None:
        cpu, sized_by = task_cpu, SIZED_BY_REQUEST
    else:
        wanted = max(limits.cpu_min, math.ceil(1024 * input_bytes / INPUT_BYTES_PER_VCPU))
        cpu = next((step for step in FARGATE_CPU_STEPS if step >= wanted), FARGATE_CPU_STEPS[-1])
        cpu, sized_by = min(cpu, limits.cpu_max), SIZED_BY_INPUT
    scratch_gib = EPHEMERAL_BASE_GIB + math.ceil(SCRATCH_PER_INPUT_BYTE * input_bytes / GIB)
    ephemeral = min(max(scratch_gib, limits.ephemeral_min_gib), limits.ephemeral_max_gib)
    return TaskSize(
        cpu=cpu,
        memory=fargate_memory(cpu, limits.memory_per_vcpu),
        ephemeral_storage_gib=ephemeral,
        sized_by=sized_by,
        input_bytes=input_bytes,
    )
