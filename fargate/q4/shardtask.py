"""One step of a sharded run in the Fargate task (docs/contract.md, "Sharded runs"): the S3 edge around
:mod:`q4.shards`.

``pass1`` and ``pass2`` write their shard's partial once: the arrays (``data.npz``, deterministic, so a
retried step may overwrite them) and then ``partial.json`` with ``If-None-Match: *``, the step's commit
marker. A step that finds its ``partial.json`` has nothing to do. ``pass2`` writes its shard's part of each
row output as multipart uploads under its step prefix. ``finish`` assembles the row outputs at their usual
keys (CSV in S3 with :mod:`q4.s3concat`; Parquet rewritten through the task), writes the documents, then
MANIFEST.json once and the done message, as an unsharded task does.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import q4_contract as contract
from q4_contract import shards as plan_rules

from q4 import aws
from q4.cost import task_cost
from q4.errors import EXIT_OK, InputError, TransientError
from q4.s3concat import Piece, concat
from q4.s3io import S3Source, S3Writer

if TYPE_CHECKING:
    from q4.job import JobSpec
    from q4.shards import Partial, ShardedResult
    from q4.task import Task

logger = logging.getLogger("q4.task")

DATA_NAME = "data.npz"


class ShardStep:
    """Step ``step`` of shard ``shard`` of the task's run."""

    def __init__(self, task: Task, step: plan_rules.Step) -> None:
        self.task = task
        self.step = step
        self.run_id = task.job.run_id
        self.bucket = task.settings.artifacts_bucket
        self.s3 = task.s3

    # ------------------------------------------------------------ entry

    def run(self, started: float, spec: JobSpec, sources: Sequence[S3Source]) -> int:
        """Do the step; the exit code (bad input raises :class:`Q4Error`, AWS trouble TransientError)."""
        plan = self._plan()
        shards = int(plan["shards"])
        if self.step.shard >= shards or (self.step.step == plan_rules.FINISH and self.step.shard != 0):
            raise aws.ConfigurationError(
                "missing_configuration",
                f"The task was launched as {self.step.step} of shard {self.step.shard}, but the plan of run "
                f"{self.run_id} has {shards} shards; a launch error (the task exits as a crash).",
            )
        self._check_inputs(plan)
        names = [i["key"] for i in self.task.inputs]
        if self.step.step == plan_rules.PASS1:
            return self._pass1(plan, sources, names, spec)
        if self.step.step == plan_rules.PASS2:
            return self._pass2(plan, sources, names, spec)
        return self._finish(plan, sources, names, spec, started)

    def _plan(self) -> dict[str, Any]:
        with aws.aws_errors(f"read the plan of run {self.run_id}"):
            plan = self.task.store.read_json(plan_rules.plan_key(self.run_id))
        if plan is None or not isinstance(plan.get("slices"), list):
            raise TransientError(
                "shard_not_ready",
                f"Run {self.run_id} has no readable plan.json, yet a shard step was launched; retried.",
            )
        return plan

    def _check_inputs(self, plan: Mapping[str, Any]) -> None:
        """The inputs are still those the plan cut: the same keys, sizes and (where the plan has them) ETags;
        a replaced object of the same size would mix two versions across shards."""
        planned = [(str(i["key"]), int(i["size"]), i.get("etag")) for i in plan.get("inputs") or []]
        listed = [
            (str(i["key"]), int(i["size"]), i.get("etag") if planned_etag else None)
            for i, (_, _, planned_etag) in zip(self.task.inputs, planned, strict=False)
        ]
        if len(planned) != len(self.task.inputs) or planned != listed:
            raise InputError(
                "input_changed",
                f"The inputs of run {self.run_id} changed after the run was planned (objects added, "
                "removed or replaced under its input); leave a run's inputs alone and submit again under a "
                "new run id.",
                {
                    "planned": [k for k, _, _ in planned][:20],
                    "listed": [i["key"] for i in self.task.inputs][:20],
                },
            )

    def _ranges(self, plan: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(plan["slices"][self.step.shard]["ranges"])

    # ------------------------------------------------------------ partials

    def _partial_done(self, step: str, shard: int) -> bool:
        with aws.aws_errors(f"look for the partial of {step} shard {shard}"):
            return self.task.store.exists(plan_rules.partial_key(self.run_id, step, shard))

    def _write_partial(self, step: str, shard: int, partial: Partial) -> bool:
        key = plan_rules.partial_key(self.run_id, step, shard)
        data_key = key.rsplit("/", 1)[0] + "/" + DATA_NAME
        with aws.aws_errors(f"write the partial of {step} shard {shard}"):
            self.s3.put_object(Bucket=self.bucket, Key=data_key, Body=partial.to_bytes())
            return self.task.store.put_json_once(key, {"schema": plan_rules.PARTIAL_SCHEMA, **partial.meta})

    def _read_partials(self, step: str, shards: int) -> list[Partial]:
        """Every shard's ``step`` partial, in shard order: the metas read now; each ``data.npz`` downloaded
        (to a scratch file, then loaded) only when a merge reaches it, and again on every access, so a task
        holds one partial's arrays at a time (:class:`q4.shards.Partial`), never its bytes beside them."""
        import functools
        import shutil

        from q4.shards import Partial, load_arrays

        def load(shard: int, data_key: str) -> dict[str, Any]:
            with (
                aws.aws_errors(f"read the {step} partial of shard {shard} of run {self.run_id}"),
                tempfile.TemporaryFile(prefix="q4-partial-", dir=self.task.settings.scratch_dir) as f,
            ):
                body = self.s3.get_object(Bucket=self.bucket, Key=data_key)["Body"]
                shutil.copyfileobj(body, f, 8 << 20)
                f.seek(0)
                return load_arrays(f)

        partials = []
        with aws.aws_errors(f"read the {step} partials of run {self.run_id}"):
            for shard in range(shards):
                key = plan_rules.partial_key(self.run_id, step, shard)
                meta = self.task.store.read_json(key)
                if meta is None:
                    raise TransientError(
                        "shard_not_ready",
                        f"The {step} partial of shard {shard} of run {self.run_id} is missing, yet the next "
                        "step was launched; retried.",
                    )
                data_key = key.rsplit("/", 1)[0] + "/" + DATA_NAME
                partials.append(Partial.deferred(meta, functools.partial(load, shard, data_key)))
        return partials

    # ------------------------------------------------------------ steps

    def _pass1(
        self, plan: Mapping[str, Any], sources: Sequence[S3Source], names: list[str], spec: JobSpec
    ) -> int:
        from q4 import shards

        if self._partial_done(plan_rules.PASS1, self.step.shard):
            logger.info("Pass 1 of this shard is already done; nothing to do.")
            return EXIT_OK
        clock = time.perf_counter()
        partial = shards.pass1(sources, names, self._ranges(plan), spec)
        self.task.stop.check()
        first = self._write_partial(plan_rules.PASS1, self.step.shard, partial)
        logger.info(
            "Pass 1 of the shard done." if first else "Another task wrote this shard's pass-1 partial first.",
            extra={"shard": self.step.shard, "seconds": round(time.perf_counter() - clock, 3)},
        )
        return EXIT_OK

    def _pass2(
        self, plan: Mapping[str, Any], sources: Sequence[S3Source], names: list[str], spec: JobSpec
    ) -> int:
        from q4 import shards

        shard = self.step.shard
        if self._partial_done(plan_rules.PASS2, shard):
            logger.info("Pass 2 of this shard is already done; nothing to do.")
            return EXIT_OK
        clock = time.perf_counter()
        first_pass = self._read_partials(plan_rules.PASS1, int(plan["shards"]))
        opened: dict[str, S3Writer] = {}

        def open_sink(name: str, content_type: str) -> S3Writer:
            writer = S3Writer(
                self.s3, self.bucket, plan_rules.part_key(self.run_id, shard, name), content_type
            )
            opened[name] = writer
            return writer

        partial = shards.pass2(sources, names, self._ranges(plan), spec, first_pass, shard, open_sink)
        partial.meta["parts"] = {
            name: {"bytes": writer.bytes, "sha256": writer.sha256, "content_type": writer.content_type}
            for name, writer in sorted(opened.items())
        }
        self.task.stop.check()
        first = self._write_partial(plan_rules.PASS2, shard, partial)
        logger.info(
            "Pass 2 of the shard done." if first else "Another task wrote this shard's pass-2 partial first.",
            extra={"shard": shard, "seconds": round(time.perf_counter() - clock, 3)},
        )
        return EXIT_OK

    def _finish(
        self,
        plan: Mapping[str, Any],
        sources: Sequence[S3Source],
        names: list[str],
        spec: JobSpec,
        started: float,
    ) -> int:
        from q4 import shards
        from q4.manifest import build_manifest

        n = int(plan["shards"])
        first_pass = self._read_partials(plan_rules.PASS1, n)
        second_pass = self._read_partials(plan_rules.PASS2, n)
        prefix = contract.run_prefix(self.run_id)
        with tempfile.TemporaryDirectory(prefix="q4-finish-", dir=self.task.settings.scratch_dir) as tmp:
            run_dir = Path(tmp) / prefix.rstrip("/")
            clock = time.perf_counter()
            # no input sha256: hashing the inputs would read them all again (MANIFEST.json keeps their ETags)
            result = shards.finish(sources, names, spec, first_pass, second_pass, run_dir, input_sha256=[])
            documents_s = time.perf_counter() - clock

            clock = time.perf_counter()
            artifacts = [a.to_dict() for a in result.artifacts]
            with aws.aws_errors(f"upload the artifacts of run {self.run_id}"):
                for artifact in result.artifacts:
                    self.task.stop.check()
                    aws.upload(
                        self.s3,
                        self.bucket,
                        prefix + artifact.key,
                        run_dir / artifact.key,
                        artifact.content_type,
                    )
            artifacts.extend(self._assemble(second_pass, result))
            assemble_s = time.perf_counter() - clock

        artifacts.sort(key=lambda a: str(a["key"]))
        manifest = build_manifest(
            run_id=self.run_id,
            mode=self.task.job.mode,
            job=self.task.job.to_dict(),
            inputs=self.task.inputs,
            artifacts=artifacts,
            rows=result.rows,
            timings={
                "documents": documents_s,
                "assemble": assemble_s,
                "total": time.perf_counter() - started,
            },
            compute=self.task.compute,
            warnings=result.warnings,
        )
        manifest["sharding"] = {k: plan.get(k) for k in ("shards", "requested", "sized_by")}
        records = self._records()  # one listing per step, for the shards' entries and the cost
        manifest["shards"] = self._shard_entries(plan, first_pass, records)
        manifest["cost"] = task_cost(
            self.task.store,
            self.run_id,
            self.task.attempt,
            self.task.compute,
            self.task.environ,
            earlier=lambda: self.earlier_usage(records),
        )
        code = self.task.commit(manifest, len(artifacts), result.rows, started)
        self._drop_parts()
        return code

    def _drop_parts(self) -> None:
        """Delete pass 2's parts of the row outputs once the run is committed (they are the outputs' bytes a
        second time; the bucket's versioning keeps them as noncurrent versions until its expiry). A failure
        only costs storage: logged, not raised."""
        prefix = plan_rules.shards_prefix(self.run_id) + plan_rules.PASS2 + "/"
        try:
            keys = [
                item["Key"]
                for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                for item in page.get("Contents", [])
                if "/output/" in item["Key"]
            ]
            for first in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[first : first + 1000]]
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            logger.info("Deleted the row outputs' parts.", extra={"parts": len(keys)})
        except Exception as exc:  # the run is committed; the parts are only storage
            logger.warning("Could not delete the row outputs' parts.", extra={"error": str(exc)})

    def _assemble(self, second_pass: Sequence[Partial], result: ShardedResult) -> list[dict[str, Any]]:
        """The row outputs at their usual keys, from every shard's parts in shard order: CSV assembled in
        S3 (:func:`q4.s3concat.concat`), Parquet row groups rewritten into one file through the task."""
        from q4.assemble import assemble_parquet

        prefix = contract.run_prefix(self.run_id)
        artifacts = []
        for name in result.row_outputs:
            self.task.stop.check()
            parts = [(shard, p.meta["parts"][name]) for shard, p in enumerate(second_pass)]
            content_type = str(parts[0][1]["content_type"])
            keys = [(plan_rules.part_key(self.run_id, shard, name), meta) for shard, meta in parts]
            if name not in result.csv_headers:  # Parquet
                writer = S3Writer(self.s3, self.bucket, prefix + name, content_type)
                try:
                    assemble_parquet(
                        [S3Source(self.s3, self.bucket, key, int(meta["bytes"])) for key, meta in keys],
                        writer,
                    )
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
                artifacts.append(
                    {
                        "key": name,
                        "bytes": writer.bytes,
                        "sha256": writer.sha256,
                        "content_type": content_type,
                    }
                )
                continue
            pieces = [Piece(data=result.csv_headers[name])] + [
                Piece(key=key, size=int(meta["bytes"]), sha256=str(meta["sha256"])) for key, meta in keys
            ]
            assembled = concat(self.s3, self.bucket, prefix + name, pieces, content_type)
            artifacts.append(
                {
                    "key": name,
                    "bytes": assembled["bytes"],
                    "parts": assembled["parts"],
                    "content_type": content_type,
                }
            )
        return artifacts

    def _records(self) -> dict[str, Any]:
        """Each step's launch, stop and partial records (from one listing; none of them read)."""
        from q4_contract import shard_records

        with aws.aws_errors(f"list the shard records of run {self.run_id}"):
            return shard_records.run_step_records(self.task.store, self.run_id)

    def _stop_record(self, step: str, shard: int, attempt: int) -> dict[str, Any] | None:
        try:
            return self.task.store.read_json(plan_rules.step_stopped_key(self.run_id, step, shard, attempt))
        except Exception:  # unreadable or S3 trouble: that attempt is unknown (the cost says incomplete)
            return None

    def earlier_usage(self, records: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Usage entries of every other attempt of every step: its stop record (ECS times and size), or an
        unknown entry for an attempt launched whose STOPPED event the orchestrator has not recorded yet (it
        may still run). This attempt is left out: its own clock counts it (q4.cost.this_attempt)."""
        from q4_contract import cost as costs

        entries = []
        for step, step_records in (records if records is not None else self._records()).items():
            for shard, attempts in sorted(step_records.attempts.items()):
                for attempt in attempts:
                    if (step, shard, attempt) == (self.step.step, self.step.shard, self.task.attempt):
                        continue  # this attempt: its own clock
                    stopped = attempt in step_records.stopped.get(shard, ())
                    record = self._stop_record(step, shard, attempt) if stopped else None
                    entries.append({**costs.usage_of_stopped(record, attempt), "step": step, "shard": shard})
        return entries

    def _shard_entries(
        self, plan: Mapping[str, Any], first_pass: Sequence[Partial], records: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """MANIFEST.json's ``shards``: per shard its bytes, rows and, per pass, its attempts and the task of
        the latest one (from its stop record: the task does not read launch records)."""
        entries = []
        for index, (slice_, partial) in enumerate(zip(plan["slices"], first_pass, strict=True)):
            steps = {}
            for step in (plan_rules.PASS1, plan_rules.PASS2):
                latest = records[step].latest(index)
                if latest:
                    record = self._stop_record(step, index, latest) or {}
                    steps[step] = {"task_arn": record.get("task_arn"), "attempts": latest}
            entries.append(
                {"index": index, "bytes": slice_["bytes"], "rows": partial.meta.get("rows"), "steps": steps}
            )
        return entries
