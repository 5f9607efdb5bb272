"""What the orchestrator does: accept work messages and launch tasks; recover crashed tasks.

Outcomes are returned as short words (``launched``, ``rejected``, ``duplicate``, ``in_flight``,
``relaunched``, ``failed``, ``resent``, ``stale``, ``ignored``, ``reported``, ``running``; for the steps of a
sharded run also ``advanced``: the next step launched, ``waiting``: a partial of the step is still missing)
so callers and logs can tell what happened.

A sharded run (docs/contract.md, "Sharded runs") is planned on accept (``plan.json``, once) and launched
step by step: every pass-1 task with the plan, every pass-2 task when a pass-1 task's STOPPED event (exit 0)
finds all pass-1 partials, the finish task when a pass-2 task's event finds all pass-2 partials. Each step
of each shard has its own launch records, attempts and stop records under ``run=<id>/shards/``. When a
sharded run fails (a step's ERROR.json, ``task_crashed``, ``cancelled``) its tasks that may still run are
stopped (StopTask).

The work queue also takes ECS Task State Change events *redriven* from the DLQ (``q4 dlq --redrive``):
an event whose asynchronous delivery failed (say the relaunch's RunTask kept failing) lands in the DLQ,
and moving it to the work queue hands it to :meth:`Orchestrator.redriven_stop`. Such an event came
through a queue anyone with ``sqs:SendMessage`` can write to, so it is only a pointer: the task must be
one this orchestrator launched (its launch record names it) and its state is read back from ECS.

A transient launch problem raises :class:`LaunchError`: the SQS batch handler reports the message as a
batch item failure so SQS delivers it again; an asynchronous invocation (EventBridge) fails and Lambda
retries it, then keeps it in the DLQ.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import q4_contract as contract
from botocore.exceptions import ClientError
from q4_contract import Job, Rejection, shards
from q4_contract import cost as costs
from q4_contract import shard_records as records

from q4_orchestrator.config import OrchestratorConfig

TERMINAL_EXIT_CODES = (0, 2)


class LaunchError(RuntimeError):
    """RunTask did not start a task (failures entry, throttling, API error): retry later."""


class Orchestrator:
    """The orchestrator's decisions over real S3, SQS and ECS clients."""

    def __init__(
        self, config: OrchestratorConfig, *, s3: Any, sqs: Any, ecs: Any, logger: logging.Logger | Any
    ) -> None:
        self.config = config
        self.s3 = s3
        self.sqs = sqs
        self.ecs = ecs
        self.logger = logger
        self.store = contract.S3Store(s3, config.artifacts_bucket)

    # ------------------------------------------------------------ work messages

    def accept(self, body: str) -> str:
        """Validate a work message, write job.json once and launch attempt 1 (or report why not)."""
        event = contract.task_state_change(body)
        if event is not None:
            return self.redriven_stop(event)
        try:
            message = contract.decode_message_body(body)
            job = contract.validate_work_message(message, self.config.container_name)
            if job.task_cpu is not None:
                self.config.size_limits.check_requested(job.task_cpu, job.run_id)
            if job.shards is not None:
                self.config.shard_limits.check_requested(job.shards, job.run_id)
        except Rejection as rejection:
            return self._reject(rejection, contract.mode_hint(body))
        run_id = job.run_id
        ended = contract.ended_with(self.store, job)
        if ended is not None:
            return self._ended(job, ended)

        existing = self.store.job(run_id)
        if existing is None:
            try:
                self._check_inputs(job)
            except Rejection as rejection:
                return self._reject(rejection, job.mode)
            if not self.store.put_json_once(contract.job_key(run_id), job.to_dict()):
                existing = self.store.job(run_id)
        if existing is not None and contract.job_difference(existing, job) is not None:
            return self._reject(self._conflict(run_id), job.mode)

        # The cancel request is read BEFORE the launch records are listed: a task launched after that listing
        # starts after the request exists, so it finds the request and exits without committing.
        cancel = contract.cancel_requested(self.store, run_id)
        if self.store.attempts(run_id):
            self.logger.info(
                "Run already launched; not launching it again.",
                extra={"run_id": run_id, "outcome": "in_flight"},
            )
            return "in_flight"
        plan = records.read_plan(self.store, run_id)
        if plan is None:
            objects = self._input_objects(job)
            count, sized_by = shards.shard_count(objects, self.config.shard_limits, job.shards)
            if count > 1:
                plan = self._plan(job, objects, count, sized_by)
        if plan is not None:
            return self._accept_sharded(job, plan, cancel)
        if cancel is not None:
            return self._cancelled(job, 0, cancel, {}, {"run_id": run_id})
        task_arn = self.launch(job, 1, input_bytes=sum(o.size for o in objects))
        self.logger.info(
            "Launched the task.",
            extra={"run_id": run_id, "attempt": 1, "task_arn": task_arn, "outcome": "launched"},
        )
        return "launched"

    def _plan(self, job: Job, objects: list[shards.InputObject], count: int, sized_by: str) -> dict[str, Any]:
        """Write the run's ``plan.json`` once; the plan in force (another delivery's, if it wrote first)."""
        plan = shards.plan_document(job.run_id, objects, count, sized_by, job.shards)
        if not self.store.put_json_once(shards.plan_key(job.run_id), plan):
            plan = records.read_plan(self.store, job.run_id) or plan
        self.logger.info(
            "Planned a sharded run.",
            extra={"run_id": job.run_id, "shards": plan.get("shards"), "sized_by": plan.get("sized_by")},
        )
        return plan

    def _accept_sharded(self, job: Job, plan: Mapping[str, Any], cancel: Mapping[str, Any] | None) -> str:
        """Launch pass 1 of every shard that has no launch record yet (a delivery that failed part way left
        the others launched); ``in_flight`` when every shard has one. With a cancel request nothing is
        launched: the run ends ``cancelled`` when none of its launched attempts may still run (each has a
        stop record or its step's partial), else ``in_flight`` (their STOPPED events end it)."""
        run_id, count = job.run_id, records.plan_shards(plan)
        context = {"run_id": run_id, "shards": count}
        if cancel is not None:
            steps = records.run_step_records(self.store, run_id)
            running = sum(len(here.running()) for here in steps.values())
            if running:
                self.logger.info(
                    "Cancel requested; the run's launched tasks end it when they stop.",
                    extra={**context, "running": running, "outcome": "in_flight"},
                )
                return "in_flight"
            latest = max((_latest_attempt(here) for here in steps.values()), default=0)
            return self._cancelled(job, latest, cancel, {}, context, sharded=True)
        pass1 = records.step_records(self.store, run_id, shards.PASS1)
        unlaunched = pass1.unlaunched(count)
        if not unlaunched:
            self.logger.info(
                "Sharded run already launched; not launching it again.",
                extra={**context, "outcome": "in_flight"},
            )
            return "in_flight"
        for shard in unlaunched:
            self.launch_step(job, plan, shards.Step(shards.PASS1, shard), 1)
        self.logger.info(
            "Launched pass 1 of a sharded run.",
            extra={"run_id": run_id, "shards": count, "launched": len(unlaunched), "outcome": "launched"},
        )
        return "launched"

    def _ended(self, job: Job, ended: contract.Ended) -> str:
        """A work message for a run that already ended: a duplicate of its done message, or run_conflict."""
        if not ended.same_job:
            return self._reject(self._conflict(job.run_id), job.mode)
        bucket = self.config.artifacts_bucket
        if ended.status == "succeeded":
            self._send(contract.succeeded_done(ended.document, bucket, duplicate=True))
        else:
            self._send(contract.failed_done(ended.document, bucket, mode=job.mode, duplicate=True))
        self.logger.info(
            "Run already ended; sent a duplicate done message.",
            extra={"run_id": job.run_id, "outcome": "duplicate"},
        )
        return "duplicate"

    def _reject(self, rejection: Rejection, mode: str | None) -> str:
        self._send(contract.rejected_done(rejection, self.config.artifacts_bucket, mode=mode))
        self.logger.warning(
            "Rejected a work message.",
            extra={
                "run_id": rejection.run_id,
                "code": rejection.code,
                "reason": rejection.message,
                "outcome": "rejected",
            },
        )
        return "rejected"

    @staticmethod
    def _conflict(run_id: str) -> Rejection:
        return Rejection(
            "run_conflict",
            f"Run {run_id!r} was already accepted with a different job; submit this job under a new run id.",
            run_id,
        )

    def _check_inputs(self, job: Job) -> None:
        """Reject at once when the input object (or every input under the prefix) is missing."""
        bucket = self.config.archive_bucket
        if job.input_key is not None:
            if not contract.key_listed(self.s3, bucket, job.input_key):
                raise Rejection(
                    "input_not_found",
                    f"No input object s3://{bucket}/{job.input_key}; upload it before sending the work "
                    "message.",
                    job.run_id,
                )
            return
        assert job.input_prefix is not None
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=job.input_prefix):
            if any(contract.is_input_object(item["Key"]) for item in page.get("Contents", [])):
                return
        raise Rejection(
            "input_not_found",
            f"No .csv or .parquet object under s3://{bucket}/"
            f"{job.input_prefix}; upload the inputs before sending the work message.",
            job.run_id,
        )

    # ------------------------------------------------------------ launching

    def launch(self, job: Job, attempt: int, input_bytes: int | None = None) -> str:
        """Start attempt ``attempt`` of a run unless its launch record exists; returns the task ARN.
        ``input_bytes``: the input's size when the caller listed it (else it is listed here)."""
        record = self.store.attempt_record(job.run_id, attempt)
        if record is not None:
            return str(record.get("task_arn"))
        if input_bytes is None:
            input_bytes = sum(o.size for o in self._input_objects(job))
        size = self._size(job, attempt, input_bytes)
        return self._run_task(
            job,
            what=f"run {job.run_id!r} attempt {attempt}",
            token=contract.client_token(job.run_id, attempt),
            overrides=contract.task_overrides(job, attempt, self.config.container_name, size),
            record_key=contract.attempt_key(job.run_id, attempt),
            record={"run_id": job.run_id, "attempt": attempt},
        )

    def launch_step(self, job: Job, plan: Mapping[str, Any], step: shards.Step, attempt: int) -> str:
        """Start attempt ``attempt`` of one step of a sharded run unless its launch record exists; sized from
        the shard's slice (the finish step: from the whole input); returns the task ARN."""
        run_id = job.run_id
        record = self.store.read_json(shards.step_attempt_key(run_id, step.step, step.shard, attempt))
        if record is not None:
            return str(record.get("task_arn"))
        size = self._size(job, attempt, _step_bytes(plan, step, job.output_format), step)
        return self._run_task(
            job,
            what=f"run {run_id!r} step {step.step} shard {step.shard} attempt {attempt}",
            token=shards.step_client_token(run_id, step.step, step.shard, attempt),
            overrides=contract.task_overrides(job, attempt, self.config.container_name, size, step),
            record_key=shards.step_attempt_key(run_id, step.step, step.shard, attempt),
            record={"run_id": run_id, "step": step.step, "shard": step.shard, "attempt": attempt},
        )

    def _run_task(
        self,
        job: Job,
        *,
        what: str,
        token: str,
        overrides: dict[str, Any],
        record_key: str,
        record: dict[str, Any],
    ) -> str:
        """One RunTask (one task: each shard's task has its own environment), then its launch record once."""
        network: dict[str, Any] = {
            "subnets": list(self.config.subnets),
            "assignPublicIp": self.config.assign_public_ip,
        }
        if self.config.security_groups:
            network["securityGroups"] = list(self.config.security_groups)
        try:
            response = self.ecs.run_task(
                cluster=self.config.cluster,
                taskDefinition=self.config.task_definition,
                launchType="FARGATE",
                count=1,
                startedBy=contract.started_by(job.run_id),
                clientToken=token,
                networkConfiguration={"awsvpcConfiguration": network},
                overrides=overrides,
            )
        except ClientError as exc:
            raise LaunchError(f"RunTask for {what} failed: {exc}") from exc
        tasks = response.get("tasks") or []
        failures = response.get("failures") or []
        if failures or not tasks:
            raise LaunchError(f"RunTask for {what} started no task: {json.dumps(failures, default=str)}")
        task_arn = str(tasks[0]["taskArn"])
        self.store.put_json_once(
            record_key,
            {
                **record,
                "task_arn": task_arn,
                "client_token": token,
                "launched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        return task_arn

    def _size(
        self, job: Job, attempt: int, input_bytes: int, step: shards.Step | None = None
    ) -> contract.TaskSize:
        """The attempt's size (docs/contract.md, "Task size"): the job's ``task_cpu`` or the rule's CPU for
        its input bytes, the rule's ephemeral storage for them, within the deployment's limits."""
        size = contract.size_for(input_bytes, self.config.size_limits, job.task_cpu)
        steps = {"shard_step": step.step, "shard": step.shard} if step is not None else {}
        self.logger.info(
            "Sized the task.",
            extra={
                "run_id": job.run_id,
                "attempt": attempt,
                **steps,
                "cpu": size.cpu,
                "memory": size.memory,
                "ephemeral_storage_gib": size.ephemeral_storage_gib,
                "sized_by": size.sized_by,
                "input_bytes": size.input_bytes,
            },
        )
        return size

    def _input_objects(self, job: Job) -> list[shards.InputObject]:
        """The job's input objects in key order with their sizes and ETags (as listed, without the quotes):
        the input object, or every input object under the prefix."""
        prefix = job.input_key if job.input_key is not None else job.input_prefix
        objects = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.archive_bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    if key == job.input_key or (job.input_key is None and contract.is_input_object(key)):
                        objects.append(shards.InputObject(key, int(item.get("Size", 0)), _etag(item)))
        except ClientError as exc:
            raise LaunchError(f"Listing the input of run {job.run_id!r} failed: {exc}") from exc
        return objects

    # ------------------------------------------------------------ crash recovery

    def redriven_stop(self, event: Mapping[str, Any]) -> str:
        """A STOPPED event that came back from the DLQ through the work queue: check it, then recover.

        The message counts only when the run's launch record of that attempt names the same task ARN,
        and the task is not running: ECS (DescribeTasks) must report it STOPPED, or no longer know it (ECS
        keeps stopped tasks for about an hour). Then it is handled like the original event by
        :meth:`task_stopped`, with the exit code the event carries. A wrong exit code cannot do harm: 0 or 2
        makes the orchestrator do nothing, anything else leads to the crash path, which resends the done
        message of a committed run once or relaunches the stopped attempt. (The exit code is not read from
        ECS because the local emulator reports 0 for every container.)
        """
        detail = event.get("detail")
        if not isinstance(detail, Mapping):
            return "ignored"
        task_arn = str(detail.get("taskArn") or "")
        env = _override_env(detail, self.config.container_name)
        run_id = env.get(contract.ENV_RUN_ID, "")
        attempt = contract.attempt_from_env(env)
        step = shards.step_from_env(env)
        context: dict[str, Any] = {
            "run_id": run_id,
            "attempt": attempt,
            "task_arn": task_arn,
            "redriven": True,
        }
        record = None
        if task_arn and contract.is_valid_run_id(run_id):
            if step is None:
                record = self.store.attempt_record(run_id, attempt)
            else:
                context.update(shard_step=step.step, shard=step.shard)
                record = self.store.read_json(shards.step_attempt_key(run_id, step.step, step.shard, attempt))
        if record is None or record.get("task_arn") != task_arn:
            self.logger.warning(
                "Redriven task event names no task this orchestrator launched; ignored.",
                extra={**context, "outcome": "ignored"},
            )
            return "ignored"
        try:
            described = self.ecs.describe_tasks(cluster=self.config.cluster, tasks=[task_arn])
        except ClientError as exc:
            raise LaunchError(f"DescribeTasks for run {run_id!r} attempt {attempt} failed: {exc}") from exc
        task = next((t for t in described.get("tasks") or [] if t.get("taskArn") == task_arn), None)
        if task is not None and task.get("lastStatus") != "STOPPED":
            self.logger.info(
                "Redriven task event, but the task is still running; its own STOPPED event will follow.",
                extra={**context, "last_status": task.get("lastStatus"), "outcome": "running"},
            )
            return "running"
        self.logger.info(
            "Redriven task event of a stopped task; recovering the run.",
            extra={**context, "known_to_ecs": task is not None},
        )
        return self.task_stopped({**detail, "lastStatus": "STOPPED"})

    def task_stopped(self, detail: Mapping[str, Any]) -> str:
        """Handle an ECS Task State Change: relaunch a crashed attempt, or report the run failed."""
        stopped = self._stopped_task(detail)
        if stopped is None:
            return "ignored"
        run_id, attempt, env, context = stopped
        step = shards.step_from_env(env)
        if step is not None:
            return self._step_stopped(run_id, step, attempt, env, detail, context)
        self._record_stop(run_id, attempt, detail)
        if context["exit_code"] in TERMINAL_EXIT_CODES:
            self.logger.info(
                "Task ended; its done message is already sent.", extra={**context, "outcome": "reported"}
            )
            return "reported"

        latest = max(self.store.attempts(run_id), default=0)
        if latest > attempt:
            self.logger.info(
                "Stale stop event of an older attempt; ignored.",
                extra={**context, "latest_attempt": latest, "outcome": "stale"},
            )
            return "stale"

        manifest = self.store.manifest(run_id)
        error = None if manifest is not None else self.store.error(run_id)
        if manifest is not None or error is not None:
            return self._notify_once(run_id, manifest, error, context)

        job = self._job(run_id, env, context)
        if job is None:
            return "ignored"

        cancel = contract.cancel_requested(self.store, run_id)
        if cancel is not None:
            return self._cancelled(
                job, attempt, cancel, _stop_details(detail, self.config.container_name), context
            )

        if attempt < self.config.max_attempts:
            task_arn = self.launch(job, attempt + 1)
            self.logger.warning(
                "Task crashed; relaunched it.",
                extra={**context, "new_task_arn": task_arn, "outcome": "relaunched"},
            )
            return "relaunched"
        return self._crashed_for_good(job, attempt, detail, context)

    def _step_stopped(
        self,
        run_id: str,
        step: shards.Step,
        attempt: int,
        env: Mapping[str, str],
        detail: Mapping[str, Any],
        context: dict[str, Any],
    ) -> str:
        """A STOPPED event of a step of a sharded run: start the next step when this one's partials are all
        there, relaunch a crashed step, or end the run (docs/contract.md, "Sharded runs")."""
        context.update(shard_step=step.step, shard=step.shard)
        self._record_stop(run_id, attempt, detail, step)
        exit_code = context["exit_code"]
        if exit_code == 2:
            error = self.store.error(run_id)
            if error is not None and _written_by(step, None, error):
                # the step failed the run: what the other steps' tasks compute is not needed any more
                self._stop_run_tasks(run_id, error.get("code"), context)
            self.logger.info(
                "Step ended; its task reported the run.", extra={**context, "outcome": "reported"}
            )
            return "reported"
        if exit_code == 0 and step.step == shards.FINISH:
            self.logger.info(
                "Step ended; its task reported the run.", extra={**context, "outcome": "reported"}
            )
            return "reported"
        here = records.step_records(self.store, run_id, step.step)
        if here.latest(step.shard) > attempt:
            self.logger.info(
                "Stale stop event of an older attempt of the step; ignored.",
                extra={**context, "latest_attempt": here.latest(step.shard), "outcome": "stale"},
            )
            return "stale"
        manifest = self.store.manifest(run_id)
        error = None if manifest is not None else self.store.error(run_id)
        if manifest is not None or error is not None:
            if exit_code == 0:
                self.logger.info(
                    "Step ended; the run already ended.", extra={**context, "outcome": "reported"}
                )
                return "reported"
            if not _written_by(step, manifest, error):
                # another step ended the run and sent its done message (a task the orchestrator stopped
                # then, too); this crash changes nothing
                self.logger.info(
                    "Step crashed after another step ended the run.", extra={**context, "outcome": "reported"}
                )
                return "reported"
            return self._notify_once(run_id, manifest, error, context)
        if step.shard in here.partials:
            if exit_code != 0:
                # the step's work is done and written once: a crash after it (while exiting) needs no rerun
                self.logger.warning("Step crashed after writing its partial; treated as done.", extra=context)
            return self._advance(run_id, step, here, context)
        cancel = contract.cancel_requested(self.store, run_id)
        if exit_code == 0:
            # exit 0 promises the step's partial; without it the step did not complete: a crash, unless the
            # run has a cancel request (the task found it and stopped without writing)
            if cancel is not None:
                self.logger.warning(
                    "Step exited 0 without its partial; it stopped for the run's cancel request.",
                    extra=context,
                )
            else:
                self.logger.error("Step exited 0 without its partial; treated as a crash.", extra=context)
        job = self._job(run_id, env, context)
        if job is None:
            return "ignored"
        if cancel is not None:
            details = {**_stop_details(detail, self.config.container_name), **_step_details(step)}
            return self._cancelled(job, attempt, cancel, details, context, sharded=True)
        plan = records.read_plan(self.store, run_id)
        if plan is None:
            self.logger.error("A step of a run without plan.json stopped; ignored.", extra=context)
            return "ignored"
        if attempt < self.config.max_attempts:
            task_arn = self.launch_step(job, plan, step, attempt + 1)
            self.logger.warning(
                "Step crashed; relaunched it.",
                extra={**context, "new_task_arn": task_arn, "outcome": "relaunched"},
            )
            return "relaunched"
        return self._crashed_for_good(job, attempt, detail, context, step)

    def _advance(
        self, run_id: str, step: shards.Step, here: records.StepRecords, context: Mapping[str, Any]
    ) -> str:
        """A pass-1 or pass-2 task completed: launch the next step once every partial of this step is there
        (every shard of pass 2; the finish task), each shard that has no launch record yet."""
        plan = records.read_plan(self.store, run_id)
        if plan is None:
            self.logger.error("A step of a run without plan.json stopped; ignored.", extra=context)
            return "ignored"
        count = records.plan_shards(plan)
        missing = here.missing_partials(count)
        if missing:
            # a cancelled run launches no more shards: it ends once none of this step's launched attempts
            # may still run (an earlier step is complete; the next one is not launched)
            cancel = contract.cancel_requested(self.store, run_id)
            if cancel is not None and not here.running():
                job = self._job(run_id, {}, context)
                if job is None:
                    return "ignored"
                details = _step_details(step)
                return self._cancelled(job, _latest_attempt(here), cancel, details, context, sharded=True)
            self.logger.info(
                "Step's partial written; waiting for the other shards.",
                extra={**context, "missing": len(missing), "outcome": "waiting"},
            )
            return "waiting"
        job = self._job(run_id, {}, context)
        if job is None:
            return "ignored"
        # read BEFORE listing the next step's launch records (see accept)
        cancel = contract.cancel_requested(self.store, run_id)
        following = records.NEXT_STEP[step.step]
        unlaunched = records.step_records(self.store, run_id, following).unlaunched(count)
        if not unlaunched:
            self.logger.info(
                "Next step already launched; duplicate event ignored.",
                extra={**context, "next_step": following, "outcome": "stale"},
            )
            return "stale"
        if cancel is not None:
            details = _step_details(step)
            return self._cancelled(job, _latest_attempt(here), cancel, details, context, sharded=True)
        for shard in unlaunched:
            self.launch_step(job, plan, shards.Step(following, shard), 1)
        self.logger.info(
            "Every partial of the step is written; launched the next step.",
            extra={**context, "next_step": following, "launched": len(unlaunched), "outcome": "advanced"},
        )
        return "advanced"

    def _job(self, run_id: str, env: Mapping[str, str], context: Mapping[str, Any]) -> Job | None:
        """The run's job (job.json, else the task's environment); None when neither gives a valid one."""
        job_doc = self.store.job(run_id)
        try:
            return contract.parse_job(job_doc) if job_doc is not None else Job.from_env(env)
        except Rejection:
            self.logger.error("Cannot rebuild the job of a stopped task; ignored.", extra=context)
            return None

    def _record_stop(
        self, run_id: str, attempt: int, detail: Mapping[str, Any], step: shards.Step | None = None
    ) -> None:
        """Keep what ECS says about the stopped attempt (billed time, size) once, for the run's cost: the
        committing attempt's MANIFEST.json / ERROR.json sums the earlier attempts from these records (a
        sharded run's finish task: every step's, ``q4_contract.shard_records.stopped_step_usage``)."""
        if not contract.is_valid_run_id(run_id):
            return
        record = costs.stopped_record(detail, run_id, attempt)
        key = costs.stopped_key(run_id, attempt)
        if step is not None:
            record.update(step=step.step, shard=step.shard)
            key = shards.step_stopped_key(run_id, step.step, step.shard, attempt)
        try:
            self.store.put_json_once(key, record)
        except Exception as exc:  # the cost is an account, not a reason to stop recovering the run
            self.logger.warning(
                "Could not record the stopped attempt's billed time.",
                extra={"run_id": run_id, "attempt": attempt, "error": str(exc)},
            )

    def _crash_cost(
        self, run_id: str, attempt: int, detail: Mapping[str, Any], step: shards.Step | None = None
    ) -> dict[str, Any]:
        """The ``cost`` of a run whose every attempt crashed: each attempt's ECS time (stopped records); for a
        sharded run every stopped attempt of every step."""
        record = costs.stopped_record(detail, run_id, attempt)
        prices = costs.prices_for(
            record["region"],
            record["architecture"] or self.config.task_cpu_architecture,
            price_region=self.config.price_region,
        )
        if step is not None:
            return costs.run_cost(records.stopped_step_usage(self.store, run_id), prices)
        return costs.run_cost(costs.earlier_attempts(self.store, run_id, range(1, attempt + 1)), prices)

    def _stopped_task(
        self, detail: Mapping[str, Any]
    ) -> tuple[str, int, dict[str, str], dict[str, Any]] | None:
        """``(run_id, attempt, environment, log context)`` of a STOPPED task of ours, else None."""
        if detail.get("lastStatus") != "STOPPED":
            return None
        cluster_arn = str(detail.get("clusterArn", ""))
        if cluster_arn and cluster_arn.rsplit("/", 1)[-1] != self.config.cluster_name:
            return None
        container = _container(detail, self.config.container_name)
        env = _override_env(detail, self.config.container_name)
        run_id = env.get(contract.ENV_RUN_ID)
        if container is None or not run_id:
            return None
        attempt = contract.attempt_from_env(env)
        context = {
            "run_id": run_id,
            "attempt": attempt,
            "task_arn": detail.get("taskArn"),
            "exit_code": container.get("exitCode"),
            "stopped_reason": detail.get("stoppedReason"),
        }
        return run_id, attempt, env, context

    def _crashed_for_good(
        self,
        job: Job,
        attempt: int,
        detail: Mapping[str, Any],
        context: Mapping[str, Any],
        step: shards.Step | None = None,
    ) -> str:
        """The last attempt crashed: ERROR.json ``task_crashed`` (once) and the failed done message (a step
        of a sharded run: its details name the shard and the step)."""
        run_id = job.run_id
        container = _container(detail, self.config.container_name) or {}
        reason = _stop_reason(detail, container)
        which = "The task" if step is None else f"The {step.step} task of shard {step.shard}"
        error_doc = contract.error_document(
            run_id=run_id,
            code="task_crashed",
            mode=job.mode,
            attempts=attempt,
            message=f"{which} crashed on all {attempt} attempts (last stop reason: {reason}); check the "
            "task logs, then resubmit under a new run id.",
            details={
                "stopped_reason": detail.get("stoppedReason"),
                "stop_code": detail.get("stopCode"),
                "exit_code": container.get("exitCode"),
                "container_reason": container.get("reason"),
                "task_arn": detail.get("taskArn"),
                **(_step_details(step) if step is not None else {}),
            },
            retryable=True,
        )
        error_doc["cost"] = self._crash_cost(run_id, attempt, detail, step)
        if not self.store.put_json_once(contract.error_key(run_id), error_doc):
            error_doc = self.store.error(run_id) or error_doc
        self.logger.error(
            "Task crashed on its last attempt; the run failed.", extra={**context, "outcome": "failed"}
        )
        self._notify_once(run_id, None, error_doc, context)
        if step is not None:
            self._stop_run_tasks(run_id, error_doc.get("code"), context)
        return "failed"

    def _cancelled(
        self,
        job: Job,
        attempts: int,
        request: Mapping[str, Any],
        details: Mapping[str, Any],
        context: Mapping[str, Any],
        *,
        sharded: bool = False,
    ) -> str:
        """A cancelled run with nothing of it running: ERROR.json ``cancelled`` (once) and one failed done
        message (docs/contract.md, "Cancel"); a sharded run's tasks that may still run are stopped."""
        run_id = job.run_id
        error_doc = contract.cancelled_error(
            run_id=run_id,
            mode=job.mode,
            attempts=attempts,
            request=request,
            details=details,
            job=job.to_dict(),
        )
        if not self.store.put_json_once(contract.error_key(run_id), error_doc):
            # Another delivery of this message or event wrote it first; that one sends the done message.
            self.logger.info("Run already ended (ERROR.json exists).", extra={**context, "outcome": "stale"})
            return "stale"
        self.logger.warning(
            "Run cancelled; it ends failed (cancelled).", extra={**context, "outcome": "cancelled"}
        )
        self._notify_once(run_id, None, error_doc, context)
        if sharded:
            self._stop_run_tasks(run_id, error_doc.get("code"), context)
        return "cancelled"

    def _stop_run_tasks(self, run_id: str, code: Any, context: Mapping[str, Any]) -> int:
        """The sharded run failed: StopTask (reason ``Run failed: <code>``) every launched attempt of every
        step that has no stop record (the launch records name the tasks); how many were asked to stop.

        Stopping only saves the tasks' time: a task that is not stopped finds ERROR.json itself before it
        writes anything and exits 2, so a listing or StopTask that fails is logged and not retried. The
        stopped tasks exit 143; their STOPPED events find ERROR.json and send nothing."""
        try:
            launched = records.unstopped_launch_records(self.store, run_id)
        except Exception as exc:  # the run has ended either way; see above
            self.logger.warning(
                "Could not list the failed run's tasks to stop them.", extra={**context, "error": str(exc)}
            )
            return 0
        reason = f"Run failed: {code}"
        stopped = 0
        for record in launched:
            if record.task_arn is None:
                continue
            try:
                self.ecs.stop_task(cluster=self.config.cluster, task=record.task_arn, reason=reason)
            except ClientError as exc:  # already gone, throttled, denied: that task finds ERROR.json
                self.logger.warning(
                    "Could not stop a task of the failed run.",
                    extra={
                        **context,
                        "stop_task_arn": record.task_arn,
                        "stop_shard_step": record.step,
                        "stop_shard": record.shard,
                        "error": str(exc),
                    },
                )
                continue
            stopped += 1
        if launched:
            self.logger.info(
                "Stopped the failed run's other tasks.",
                extra={**context, "stopped_tasks": stopped, "reason": reason},
            )
        return stopped

    def _notify_once(
        self,
        run_id: str,
        manifest: dict[str, Any] | None,
        error: dict[str, Any] | None,
        context: Mapping[str, Any],
    ) -> str:
        """Send the run's terminal done message unless the orchestrator already sent it."""
        if self.store.exists(contract.notice_key(run_id)):
            self.logger.info(
                "Done message already sent; duplicate stop event ignored.",
                extra={**context, "outcome": "stale"},
            )
            return "stale"
        bucket = self.config.artifacts_bucket
        message = (
            contract.succeeded_done(manifest, bucket)
            if manifest is not None
            else contract.failed_done(error or {"run_id": run_id}, bucket)
        )
        self._send(message)
        self.store.put_json_once(contract.notice_key(run_id), message)
        self.logger.info("Sent the run's done message after a crash.", extra={**context, "outcome": "resent"})
        return "resent"

    # ------------------------------------------------------------ done queue

    def _send(self, message: Mapping[str, Any]) -> None:
        self.sqs.send_message(
            QueueUrl=self.config.done_queue_url, MessageBody=json.dumps(message, sort_keys=True)
        )


def _container(detail: Mapping[str, Any], container_name: str) -> Mapping[str, Any] | None:
    """The event's entry for the task's container (its exit code and reason)."""
    return next((c for c in detail.get("containers", []) if c.get("name") == container_name), None)


def _override_env(detail: Mapping[str, Any], container_name: str) -> dict[str, str]:
    for override in (detail.get("overrides") or {}).get("containerOverrides", []):
        if override.get("name") == container_name:
            return {
                str(item.get("name")): str(item.get("value", "")) for item in override.get("environment", [])
            }
    return {}


def _stop_details(detail: Mapping[str, Any], container_name: str) -> dict[str, Any]:
    """What ERROR.json records of a stopped task: stop code and reason, exit code, task ARN."""
    container = _container(detail, container_name) or {}
    return {
        "stop_code": detail.get("stopCode"),
        "stopped_reason": detail.get("stoppedReason"),
        "exit_code": container.get("exitCode"),
        "task_arn": detail.get("taskArn"),
    }


def _written_by(
    step: shards.Step, manifest: Mapping[str, Any] | None, error: Mapping[str, Any] | None
) -> bool:
    """Whether the run's terminal document may be this step's (so its done message may be unsent when the
    step crashed): MANIFEST.json is the finish task's; an ERROR.json names the shard and step that wrote it
    (one that names none may be anyone's)."""
    if manifest is not None:
        return step.step == shards.FINISH
    details = (error or {}).get("details")
    if not isinstance(details, Mapping) or "shard_step" not in details:
        return True
    return bool(details.get("shard_step") == step.step and details.get("shard") == step.shard)


def _latest_attempt(here: records.StepRecords) -> int:
    """The highest attempt launched of any shard of a step (0: none): ERROR.json ``attempts`` of a sharded
    run that is cancelled."""
    return max((max(attempts) for attempts in here.attempts.values() if attempts), default=0)


def _etag(item: Mapping[str, Any]) -> str | None:
    """A listed object's ETag without its quotes (None when the listing gives none)."""
    etag = str(item.get("ETag") or "").strip('"')
    return etag or None


def _step_details(step: shards.Step) -> dict[str, Any]:
    """What ERROR.json's ``details`` say of the step of a sharded run that ended it."""
    return {"shard": step.shard, "shard_step": step.step}


def _step_bytes(plan: Mapping[str, Any], step: shards.Step, output_format: str) -> int:
    """The input bytes a step's task is sized from: its shard's slice; the finish task, the largest slice
    when the outputs are CSV, else the whole input.

    The finish task merges d x d partials one at a time and assembles CSV outputs inside S3
    (``UploadPartCopy``): the whole input's size would only buy it cores and disk it does not use. Parquet
    outputs are decoded and written again through it (every row of the input), so it keeps the size (and
    the network bandwidth that comes with it) of an unsharded run's task."""
    if step.step == shards.FINISH:
        if output_format == "parquet":
            return sum(int(item.get("size", 0)) for item in plan.get("inputs") or [])
        return max((int(item.get("bytes", 0)) for item in plan.get("slices") or []), default=0)
    for item in plan.get("slices") or []:
        if item.get("index") == step.shard:
            return int(item.get("bytes", 0))
    return 0


def _stop_reason(detail: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    parts = [str(detail.get(name)) for name in ("stopCode", "stoppedReason") if detail.get(name)]
    if container.get("reason"):
        parts.append(str(container["reason"]))
    if container.get("exitCode") is None:
        parts.append("no exit code")
    else:
        parts.append(f"exit code {container['exitCode']}")
    return "; ".join(parts)
