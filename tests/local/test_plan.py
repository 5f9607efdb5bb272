"""`terraform plan` right after `q4 local up` proposes nothing: the emulator reads back what Terraform wrote.

A plan that always shows changes on the local stack hides real drift. This runs the real `terraform plan
-detailed-exitcode` in the stack's own Terraform copy (`<state>/terraform`), with the variables and the
environment `q4 local up` applied it with, against the session's deployed stack (the `stack` fixture). It
only reads: no plan file, the refreshed state is not written, `-lock=false`; never an apply.

It plans against the deployment as it is when it runs: tests of tests/local that ran before it on the shared
stack (in any order) must have put their temporary changes back (function environment, work-queue visibility
timeout; the fault tests' ``ecs_fault_proxy`` fixture also reads its own restore back).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from q4_deploy import terraform
from q4_local import state as stack_state
from q4_local.runtime import aws_env
from q4_local.stack import LOCAL_VARIABLES

pytestmark = pytest.mark.slow


def test_terraform_plan_after_up_proposes_no_change(stack: dict[str, Any]) -> None:
    state_dir = stack["state_dir"]
    state = stack_state.load(state_dir)
    assert state is not None and state.ready, f"no running stack in {state_dir}"
    workdir = state_dir / "terraform"
    (zip_path,) = state.lambda_zips.values()
    # What stack._start passes to terraform apply.
    variables = {**LOCAL_VARIABLES, "lambda_zip_path": zip_path, "region": state.region}
    # The environment `q4 local up` ran terraform in (the fixture's, without the caller's AWS_/Q4_ variables).
    env = terraform.terraform_env(
        workdir, base_env={**stack["env"], **aws_env(state.endpoint_url, state.region)}
    )
    started = time.monotonic()
    plan = terraform.plan(workdir, env, variables, timeout=300)
    print(f"\nterraform plan against the local stack: {time.monotonic() - started:.0f} s")
    changes = "\n".join(plan.changes)
    assert plan.clean, (
        f"terraform plan right after apply proposes changes:\n{changes}\n\n{plan.output[-12000:]}"
    )
