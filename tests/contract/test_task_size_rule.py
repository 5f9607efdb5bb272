"""The sizing rule and Fargate's table (q4_contract.sizing; docs/contract.md, "Task size"), the orchestrator's
limits from its environment, and the Terraform variables that set them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import q4_contract as contract
from hypothesis import given
from hypothesis import strategies as st
from q4_contract import Rejection, SizeLimits, size_for
from q4_orchestrator.config import SIZE_LIMIT_ENV, ConfigurationError, size_limits_from_env

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
DEFAULTS = SizeLimits()


@pytest.mark.parametrize(
    ("input_bytes", "cpu", "memory", "storage"),
    [
        (0, 1024, 4096, 21),  # the minimum: CPU, storage at Fargate's smallest override
        (200 * 1024**2, 1024, 4096, 21),  # 20 GiB + 2 x 0.2 GiB, rounded up
        (2 * GIB, 1024, 4096, 24),  # one vCPU per 2 GiB
        (2 * GIB + 1, 2048, 8192, 25),  # a byte more: the next CPU step
        (5 * GIB, 4096, 16384, 30),  # 2.5 vCPUs -> 4096
        (9 * GIB, 4096, 16384, 38),  # 4.5 vCPUs -> 8192, clamped to the maximum
        (100 * GIB, 4096, 16384, 200),  # storage clamped to the maximum
    ],
)
def test_the_rule_sizes_cpu_and_storage_from_the_input_bytes(
    input_bytes: int, cpu: int, memory: int, storage: int
) -> None:
    size = size_for(input_bytes, DEFAULTS)
    assert (size.cpu, size.memory, size.ephemeral_storage_gib) == (cpu, memory, storage)
    assert (size.sized_by, size.input_bytes) == ("input_bytes", input_bytes)


def test_a_requested_cpu_replaces_the_rules_cpu_but_not_its_storage() -> None:
    size = size_for(10 * GIB, SizeLimits(cpu_max=16384), task_cpu=512)
    assert (size.cpu, size.memory, size.ephemeral_storage_gib, size.sized_by) == (512, 2048, 40, "requested")


@given(
    st.integers(min_value=0, max_value=10**13),
    st.sampled_from(contract.FARGATE_CPU_STEPS),
    st.sampled_from(contract.FARGATE_CPU_STEPS),
    st.integers(min_value=512, max_value=8192),
    st.integers(min_value=21, max_value=200),
    st.integers(min_value=21, max_value=200),
)
def test_every_size_is_a_fargate_combination_within_the_limits(
    input_bytes: int, cpu_a: int, cpu_b: int, per_vcpu: int, storage_a: int, storage_b: int
) -> None:
    limits = SizeLimits(min(cpu_a, cpu_b), max(cpu_a, cpu_b), per_vcpu, *sorted((storage_a, storage_b)))
    assert limits.problem() is None
    size = size_for(input_bytes, limits)
    assert limits.cpu_min <= size.cpu <= limits.cpu_max
    assert size.memory in contract.FARGATE_MEMORY_MIB[size.cpu]
    assert limits.ephemeral_min_gib <= size.ephemeral_storage_gib <= limits.ephemeral_max_gib
    # more input never gets a smaller task
    larger = size_for(input_bytes * 2 + GIB, limits)
    assert larger.cpu >= size.cpu and larger.ephemeral_storage_gib >= size.ephemeral_storage_gib


def test_memory_follows_the_cpu_fitted_to_fargates_table() -> None:
    assert contract.fargate_memory(256, 4096) == 1024
    assert contract.fargate_memory(256, 1000) == 512
    assert contract.fargate_memory(4096, 8192) == 30720  # more than Fargate allows: its largest
    assert contract.fargate_memory(8192, 2500) == 20480  # 8 x 2500 = 20000, up to the next 4096 step
    assert contract.fargate_memory(16384, 512) == 32768  # less than Fargate allows: its smallest


def test_the_documented_table_is_the_contracts() -> None:
    """docs/contract.md's Fargate table says what FARGATE_MEMORY_MIB holds."""
    text = (ROOT / "docs" / "contract.md").read_text()
    documented: dict[int, tuple[int, ...]] = {}
    for cpu, memory in re.findall(r"^\| (\d+) \| ([\d, -]+(?: in steps of \d+)?) \|$", text, re.MULTILINE):
        stepped = re.fullmatch(r"(\d+)-(\d+) in steps of (\d+)", memory)
        if stepped:
            low, high, step = map(int, stepped.groups())
            documented[int(cpu)] = tuple(range(low, high + 1, step))
        else:
            documented[int(cpu)] = tuple(int(value) for value in memory.split(", "))
    assert documented == contract.FARGATE_MEMORY_MIB


def test_task_cpu_must_be_a_fargate_step_and_within_the_deployments_limits() -> None:
    job = contract.parse_job({"run_id": "r", "input_key": "run=r/input/x.csv", "task_cpu": 2048})
    assert job.task_cpu == 2048 and job.to_dict()["task_cpu"] == 2048
    assert contract.Job.from_env(job.to_env()) == job
    for bad, code in ((1000, "invalid_task_cpu"), (True, "invalid_type"), (2048.0, "invalid_type")):
        with pytest.raises(Rejection) as caught:
            contract.parse_job({"run_id": "r", "input_key": "run=r/input/x.csv", "task_cpu": bad})
        assert caught.value.code == code
    with pytest.raises(Rejection) as caught:
        contract.Job.from_env({"Q4_RUN_ID": "r", "Q4_INPUT_KEY": "run=r/input/x.csv", "Q4_TASK_CPU": "4k"})
    assert caught.value.code == "invalid_task_cpu" and caught.value.message.startswith("Q4_TASK_CPU='4k'")
    with pytest.raises(Rejection) as caught:
        DEFAULTS.check_requested(16384, "r")
    assert caught.value.code == "task_cpu_not_allowed" and "1024 to 4096 CPU units" in caught.value.message
    assert DEFAULTS.check_requested(4096) == 4096


def test_the_orchestrator_reads_the_limits_and_refuses_wrong_ones() -> None:
    env = dict(zip(SIZE_LIMIT_ENV.values(), ("512", "8192", "2048", "30", "100"), strict=True))
    assert size_limits_from_env(env) == SizeLimits(512, 8192, 2048, 30, 100)
    assert size_limits_from_env({}) == DEFAULTS
    for name, value in (
        ("Q4_TASK_CPU_MIN", "1000"),
        ("Q4_TASK_CPU_MIN", "8192"),  # above the default maximum
        ("Q4_TASK_MEMORY_PER_VCPU", "lots"),
        ("Q4_TASK_STORAGE_MAX_GIB", "20"),
    ):
        with pytest.raises(ConfigurationError):
            size_limits_from_env({name: value})


def test_terraform_sets_the_limits_with_the_contracts_defaults() -> None:
    """infrastructure/variables.tf's defaults are SizeLimits' and orchestrator.tf passes every limit."""
    variables = (ROOT / "infrastructure" / "variables.tf").read_text()
    orchestrator = (ROOT / "infrastructure" / "orchestrator.tf").read_text()
    names = {
        "cpu_min": "task_cpu_min",
        "cpu_max": "task_cpu_max",
        "memory_per_vcpu": "task_memory_per_vcpu_mib",
        "ephemeral_min_gib": "task_ephemeral_storage_min_gib",
        "ephemeral_max_gib": "task_ephemeral_storage_max_gib",
    }
    for attribute, variable in names.items():
        block = re.search(rf'variable "{variable}" {{(.*?)\n}}', variables, re.DOTALL)
        assert block is not None, variable
        default = re.search(r"default\s*=\s*(\d+)", block.group(1))
        assert default is not None and int(default.group(1)) == getattr(DEFAULTS, attribute), variable
        assert re.search(rf"{SIZE_LIMIT_ENV[attribute]}\s*=\s*tostring\(var\.{variable}\)", orchestrator)
