"""Load: N runs submitted at once through the work queue of a local stack, then audited.

    uv run python benchmarks/load.py                       # 200 runs; own stack in .q4/load (up, then down)
    uv run python benchmarks/load.py --state-dir DIR --keep  # reuse (or start) the stack in DIR, leave it up
    uv run python benchmarks/load.py --runs 20 --json out.json --result /tmp/load20.json

What it does:

1. brings a local stack up in its own state dir with ``q4 local up --detach`` (or reuses the one there);
2. generates mixed inputs: sizes from 100 rows to ~200k rows, modes standard/enhanced/full, a few
   deliberately bad inputs (valid messages whose task must end ``failed``) and a few bad messages
   (must end ``rejected``);
3. uploads every input (boto3), then sends every work message as fast as it can (``SendMessageBatch``);
4. drains the done queue until every run has its terminal done message (or ``--timeout``), then keeps
   draining for ``--settle`` seconds to catch late duplicates;
5. audits: each accepted run has exactly one of MANIFEST.json / ERROR.json, matching the expected
   outcome; every artifact the manifest lists exists with its bytes and sha256; rejected runs have no
   job.json and no task; done messages per run: exactly one, or identical copies; DLQ and work queue
   empty; tasks per run from the runtime's ledger;
6. prints throughput (runs/minute) and the submit -> done latency (p50/p95/max), where "submit" is the
   SendMessage call and "done" the done message's ``SentTimestamp`` (both this machine's clock), and
   writes that summary with the plan, machine, load average, commit and date to
   benchmarks/results/load.json (``--result`` for another path, ``--note`` to say the machine was shared).

Exit code 0 when every invariant holds, 1 otherwise. ``run_load`` is also used by tests/local.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from q4_contract import MODES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")

# (rows, weight): most runs are small, a few are large, as a batch of scientists' tables would be.
SIZES = ((100, 30), (1_000, 25), (10_000, 20), (50_000, 12), (200_000, 5))


@dataclass
class Planned:
    """One run of the load: what is submitted and how it must end."""

    run_id: str
    expect: str  # succeeded | failed | rejected
    body: dict[str, Any]
    rows: int = 0
    mode: str = "standard"
    data: str | None = None  # which generated file is uploaded to input_key (None: nothing uploaded)
    sent_at: float = 0.0


@dataclass
class LoadResult:
    """Everything the load measured and audited (JSON-able)."""

    runs: int
    accepted: int
    submitted_at: float
    upload_s: float
    send_s: float
    wall_s: float
    done: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run id -> done bodies in order
    latency_s: dict[str, float] = field(default_factory=dict)
    terminal: dict[str, list[str]] = field(default_factory=dict)  # run id -> MANIFEST/ERROR present
    problems: list[str] = field(default_factory=list)
    tasks_per_run: dict[str, int] = field(default_factory=dict)
    planned: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latency_s.values())
        last_done = max((self.submitted_at + value for value in latencies), default=self.submitted_at)
        span = max(last_done - self.submitted_at, 1e-9)
        by_mode: dict[str, list[float]] = {}
        by_size: dict[str, list[float]] = {}
        for plan in self.planned:
            value = self.latency_s.get(plan["run_id"])
            if value is None:
                continue
            by_mode.setdefault(f"{plan['expect']}/{plan['mode']}", []).append(value)
            if plan["expect"] == "succeeded":
                by_size.setdefault(str(plan["rows"]), []).append(value)
        duplicates = sum(len(bodies) - 1 for bodies in self.done.values() if len(bodies) > 1)
        return {
            "runs": self.runs,
            "accepted": self.accepted,
            "ended": len(self.latency_s),
            "outcomes": dict(Counter(b[0]["status"] for b in self.done.values() if b)),
            "duplicate_done_messages": duplicates,
            "upload_s": round(self.upload_s, 1),
            "send_s": round(self.send_s, 2),
            "span_s": round(span, 1),
            "throughput_runs_per_min": round(len(latencies) / span * 60, 1),
            "accepted_throughput_runs_per_min": round(
                sum(1 for p in self.planned if p["expect"] != "rejected" and p["run_id"] in self.latency_s)
                / span
                * 60,
                1,
            ),
            "latency_s": _stats(latencies),
            "latency_by_outcome_mode_s": {k: _stats(sorted(v)) for k, v in sorted(by_mode.items())},
            "latency_by_rows_s": {
                k: _stats(sorted(v)) for k, v in sorted(by_size.items(), key=lambda i: int(i[0]))
            },
            "tasks_per_run": dict(Counter(self.tasks_per_run.values())),
            "problems": self.problems,
        }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": round(_percentile(values, 50), 2),
        "p95": round(_percentile(values, 95), 2),
        "max": round(values[-1], 2),
        "mean": round(statistics.fmean(values), 2),
    }


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, int(np.ceil(q / 100 * len(values))))
    return values[rank - 1]


# ---------------------------------------------------------------- stack


def stack_up(state_dir: Path, max_tasks: int) -> tuple[dict[str, str], bool]:
    """`q4 local up --detach` in ``state_dir`` (reused when up); returns (`q4 local env` values, started)."""
    env = cli_env(state_dir)
    up = subprocess.run(
        [Q4, "local", "up", "--detach", "--max-tasks", str(max_tasks)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if up.returncode != 0:
        raise SystemExit(f"q4 local up failed:\n{up.stderr[-3000:]}")
    return stack_env(state_dir), "already up" not in up.stderr


def stack_down(state_dir: Path) -> None:
    subprocess.run(
        [Q4, "local", "down"], env=cli_env(state_dir), capture_output=True, timeout=120, check=False
    )


def cli_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "Q4_"))}
    env["Q4_LOCAL_STATE_DIR"] = str(state_dir)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def stack_env(state_dir: Path) -> dict[str, str]:
    exports = subprocess.run(
        [Q4, "local", "env"], env=cli_env(state_dir), capture_output=True, text=True, check=True
    ).stdout
    pairs = (line.removeprefix("export ").split("=", 1) for line in exports.splitlines() if "=" in line)
    return {key: shlex.split(value)[0] for key, value in pairs}


def clients(aws: dict[str, str]) -> dict[str, Any]:
    session = boto3.session.Session(
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_REGION"],
    )
    config = boto3.session.Config(max_pool_connections=20, retries={"mode": "standard", "max_attempts": 5})
    return {
        name: session.client(name, endpoint_url=aws["AWS_ENDPOINT_URL"], config=config)
        for name in ("s3", "sqs")
    }


# ---------------------------------------------------------------- inputs


def table(rows: int, seed: int) -> bytes:
    """A CSV: id and site passthrough, six correlated features, ~0.1 % rows with a non-finite value."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 3))
    mixing = rng.normal(size=(3, 6))
    features = latent @ mixing + 0.3 * rng.normal(size=(rows, 6)) + np.arange(6) * 10.0
    bad = rng.random(rows) < 0.001
    lines = ["id,site," + ",".join(f"f_{j + 1}" for j in range(6))]
    sites = ("north", "south", "east", "west")
    for i in range(rows):
        values = ",".join(repr(float(v)) for v in features[i])
        if bad[i]:
            values = "nan," + values.split(",", 1)[1]
        lines.append(f"r{i},{sites[i % 4]},{values}")
    return ("\n".join(lines) + "\n").encode()


BAD_INPUTS: dict[str, bytes] = {
    # one numeric column: too_few_features
    "one_feature": b"id,name,f_1\n" + b"".join(b"r%d,n%d,%d\n" % (i, i, i) for i in range(50)),
    # a single valid row: too_few_rows
    "one_row": b"id,f_1,f_2,f_3\nr0,1.0,2.0,3.0\nr1,nan,1.0,2.0\n",
}


def plan(n: int, seed: int, prefix: str, shards: int | None = None) -> list[Planned]:
    """N runs: ~4 % bad inputs (end failed), ~4 % bad messages (end rejected), the rest mixed valid runs.
    ``shards``: every valid message asks for that many shards (docs/contract.md, "Sharded runs"; an input
    too small for them gets fewer)."""
    rng = np.random.default_rng(seed)
    sizes = [size for size, _ in SIZES]
    weights = np.array([weight for _, weight in SIZES], dtype=float)
    n_failed = max(1, round(n * 0.04))
    n_rejected = max(1, round(n * 0.04))
    kinds = ["failed"] * n_failed + ["rejected"] * n_rejected + ["succeeded"] * (n - n_failed - n_rejected)
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    runs: list[Planned] = []
    large_left = 0 if n < 50 else None  # a short load (tests) keeps to <= 10k rows
    for i, kind in enumerate(kinds):
        run_id = f"{prefix}-{i:04d}"
        key = f"run={run_id}/input/table.csv"
        mode = MODES[i % 3]
        data: str | None
        if kind == "succeeded":
            rows = int(rng.choice(sizes, p=weights / weights.sum()))
            if large_left == 0:
                rows = min(rows, 10_000)
            body: dict[str, Any] = {"run_id": run_id, "input_key": key, "mode": mode}
            if shards is not None:
                body["shards"] = shards
            if i % 7 == 0 and mode != "full":
                body["output_format"] = "parquet"
            runs.append(Planned(run_id, kind, body, rows=rows, mode=mode, data=f"rows-{rows}"))
        elif kind == "failed":
            variant = ("one_feature", "one_row", "missing_feature")[
                len([r for r in runs if r.expect == kind]) % 3
            ]
            body = {"run_id": run_id, "input_key": key, "mode": mode}
            if shards is not None:
                body["shards"] = shards
            data = variant
            if variant == "missing_feature":
                body["features"] = ["f_1", "no_such_column"]
                data = "rows-100"
            runs.append(Planned(run_id, kind, body, rows=0, mode=mode, data=data))
        else:
            which = len([r for r in runs if r.expect == kind]) % 4
            if which == 0:
                body = {"run_id": run_id, "input_key": key, "colour": "blue"}  # unknown field
                data = "rows-100"
            elif which == 1:
                body = {"run_id": run_id, "input_key": key, "mode": "turbo"}  # unknown mode
                data = "rows-100"
            elif which == 2:
                body = {"run_id": run_id, "input_key": "run=someone-else/input/table.csv"}  # wrong prefix
                data = "rows-100"
            else:
                body = {"run_id": run_id, "input_key": key}  # nothing uploaded: input_not_found
                data = None
            runs.append(
                Planned(run_id, kind, body, rows=0, mode=str(body.get("mode", "standard")), data=data)
            )
    return runs


def _upload_all(s3: Any, bucket: str, runs: list[Planned], seed: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache: dict[str, bytes] = dict(BAD_INPUTS)
    for run in runs:
        if run.data and run.data not in cache:
            cache[run.data] = table(int(run.data.split("-")[1]), seed)

    def put(run: Planned) -> None:
        if run.data is not None:
            key = f"run={run.run_id}/input/table.csv"
            s3.put_object(Bucket=bucket, Key=key, Body=cache[run.data])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, runs))


def _send_all(sqs: Any, queue_url: str, runs: list[Planned]) -> None:
    for start in range(0, len(runs), 10):
        chunk = runs[start : start + 10]
        now = time.time()
        response = sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "MessageBody": json.dumps(run.body)} for i, run in enumerate(chunk)],
        )
        if response.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {response['Failed']}")
        for run in chunk:
            run.sent_at = now


# ---------------------------------------------------------------- drain and audit


def drain(
    sqs: Any,
    queue_url: str,
    run_ids: Iterable[str],
    timeout: float,
    settle: float,
    done: dict[str, list[dict[str, Any]]] | None = None,
    sent: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Receive (and delete) done messages until each run id has one, then ``settle`` s more.

    Returns run id -> bodies in arrival order, and run id -> SentTimestamp of its first done message.
    Messages of other runs are deleted too (this is a dedicated load stack) but kept under their id.
    """
    wanted = set(run_ids)
    done = {} if done is None else done
    first_sent = {} if sent is None else sent
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    last_report = 0.0
    while True:
        now = time.monotonic()
        complete = wanted <= set(done)
        if complete and settle_until is None:
            settle_until = now + settle
        if (settle_until is not None and now >= settle_until) or (settle_until is None and now >= deadline):
            break
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["SentTimestamp"]
        ).get("Messages", [])
        for message in messages:
            body = json.loads(message["Body"])
            run_id = str(body.get("run_id"))
            done.setdefault(run_id, []).append(body)
            first_sent.setdefault(run_id, int(message["Attributes"]["SentTimestamp"]) / 1000)
        if messages:
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        if progress is not None and now - last_report > 10:
            last_report = now
            progress(len(wanted & set(done)), len(wanted))
    return done, first_sent


def audit_run(s3: Any, bucket: str, run_id: str, expect: str, problems: list[str]) -> list[str]:
    """Check a run's objects in the artifacts bucket; returns which of MANIFEST/ERROR exist."""
    prefix = f"run={run_id}/"
    keys = {
        item["Key"]: item
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    }
    terminal = [name for name in ("MANIFEST.json", "ERROR.json") if prefix + name in keys]
    if expect == "rejected":
        if keys:
            problems.append(f"{run_id}: rejected but has objects {sorted(keys)[:3]}")
        return terminal
    if len(terminal) != 1:
        problems.append(f"{run_id}: terminal objects {terminal} (want exactly one)")
        return terminal
    if prefix + "job.json" not in keys:
        problems.append(f"{run_id}: no job.json")
    want = "MANIFEST.json" if expect == "succeeded" else "ERROR.json"
    if terminal != [want]:
        problems.append(f"{run_id}: expected {want}, found {terminal}")
        return terminal
    if want == "MANIFEST.json":
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "MANIFEST.json")["Body"].read())
        for artifact in manifest["artifacts"]:
            key = prefix + artifact["key"]
            if key not in keys:
                problems.append(f"{run_id}: manifest lists missing {artifact['key']}")
                continue
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if len(body) != artifact["bytes"] or not _matches(body, artifact):
                problems.append(f"{run_id}: {artifact['key']} does not match the manifest")
    return terminal


def _matches(body: bytes, artifact: dict[str, Any]) -> bool:
    """The artifact's sha256, or (a sharded run's assembled CSV) each of its parts' sha256, in order."""
    if "parts" not in artifact:
        return hashlib.sha256(body).hexdigest() == artifact["sha256"]
    offset = 0
    for part in artifact["parts"]:
        if hashlib.sha256(body[offset : offset + part["bytes"]]).hexdigest() != part["sha256"]:
            return False
        offset += part["bytes"]
    return offset == len(body)


def expected_tasks(s3: Any, bucket: str, run: Planned) -> tuple[int, int]:
    """How many tasks an accepted run without crashes runs (least, most): 1, or for a sharded run (its
    plan.json) every shard's pass 1 and pass 2 and one finish; a failed sharded run stops after the step
    whose tasks found the bad input (pass 1, or pass 2 where a cut CSV's bad rows and the fit show up)."""
    try:
        plan_doc = json.loads(s3.get_object(Bucket=bucket, Key=f"run={run.run_id}/plan.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return 1, 1
    n = int(plan_doc["shards"])
    return (2 * n + 1, 2 * n + 1) if run.expect == "succeeded" else (n, 2 * n)


def check_done(run: Planned, bodies: list[dict[str, Any]], problems: list[str]) -> None:
    if not bodies:
        problems.append(f"{run.run_id}: no done message")
        return
    first = bodies[0]
    if first.get("status") != run.expect:
        problems.append(
            f"{run.run_id}: done status {first.get('status')} (want {run.expect}): {first.get('error')}"
        )
    if first.get("schema") != "q4.done/v1":
        problems.append(f"{run.run_id}: done schema {first.get('schema')}")
    for again in bodies[1:]:
        if again != first:
            problems.append(f"{run.run_id}: a repeated done message differs: {first} vs {again}")
    if len(bodies) > 1:
        problems.append(f"{run.run_id}: {len(bodies)} done messages (no crash was injected)")


def run_id_of(entry: dict[str, Any]) -> str | None:
    """The Q4_RUN_ID a ledger entry's task was launched with (from its container overrides)."""
    for override in entry["task"].get("overrides", {}).get("containerOverrides", []):
        for variable in override.get("environment", []):
            if variable["name"] == "Q4_RUN_ID":
                return str(variable["value"])
    return None


def ledger_tasks(state_dir: Path) -> dict[str, int]:
    """Tasks the runtime ran, per run id (from ledger.json)."""
    path = state_dir / "ledger.json"
    counts: Counter[str] = Counter()
    if path.exists():
        for entry in json.loads(path.read_text()).values():
            run_id = run_id_of(entry)
            if run_id is not None:
                counts[run_id] += 1
    return dict(counts)


def run_load(
    aws: dict[str, str],
    state_dir: Path,
    n: int,
    *,
    seed: int = 5,
    prefix: str | None = None,
    timeout: float = 1800,
    settle: float = 15,
    exclusive: bool = True,
    shards: int | None = None,
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> LoadResult:
    c = clients(aws)
    s3, sqs = c["s3"], c["sqs"]
    prefix = prefix or f"load{int(time.time())}"
    runs = plan(n, seed, prefix, shards)
    dlq = json.loads((state_dir / "stack.json").read_text())["outputs"].get("dlq_url")
    dlq_before = _count(sqs, dlq) if dlq else 0
    log(f"load: {n} runs ({Counter(r.expect for r in runs)}), uploading inputs")
    clock = time.monotonic()
    _upload_all(s3, aws["Q4_ARCHIVE_BUCKET"], runs, seed)
    upload_s = time.monotonic() - clock
    log(f"load: inputs uploaded in {upload_s:.1f} s; sending {n} work messages")
    clock = time.monotonic()
    submitted_at = time.time()
    _send_all(sqs, aws["Q4_WORK_QUEUE_URL"], runs)
    send_s = time.monotonic() - clock
    done, first_sent = drain(
        sqs,
        aws["Q4_DONE_QUEUE_URL"],
        [r.run_id for r in runs],
        timeout,
        settle,
        progress=lambda have, want: log(
            f"load: {have}/{want} runs ended, {time.time() - submitted_at:.0f} s"
        ),
    )
    wall_s = time.time() - submitted_at
    result = LoadResult(
        runs=n,
        accepted=sum(1 for r in runs if r.expect != "rejected"),
        submitted_at=submitted_at,
        upload_s=upload_s,
        send_s=send_s,
        wall_s=wall_s,
        planned=[{k: v for k, v in asdict(r).items() if k != "body"} | {"body": r.body} for r in runs],
    )
    log("load: auditing the buckets")
    for run in runs:
        bodies = done.get(run.run_id, [])
        result.done[run.run_id] = bodies
        check_done(run, bodies, result.problems)
        if run.run_id in first_sent:
            result.latency_s[run.run_id] = first_sent[run.run_id] - run.sent_at
        result.terminal[run.run_id] = audit_run(
            s3, aws["Q4_ARTIFACTS_BUCKET"], run.run_id, run.expect, result.problems
        )
    strangers = sorted(set(done) - {r.run_id for r in runs})
    if strangers and exclusive:
        result.problems.append(f"done messages of runs not in this load: {strangers[:5]}")
    tasks = ledger_tasks(state_dir)
    result.tasks_per_run = {r.run_id: tasks.get(r.run_id, 0) for r in runs}
    for run in runs:
        count = result.tasks_per_run[run.run_id]
        if run.expect == "rejected" and count:
            result.problems.append(f"{run.run_id}: rejected but {count} task(s) ran")
        if run.expect != "rejected":
            least, most = expected_tasks(s3, aws["Q4_ARTIFACTS_BUCKET"], run)
            if not least <= count <= most:
                want = least if least == most else f"{least}-{most}"
                result.problems.append(f"{run.run_id}: {count} tasks ran (want {want}: nothing crashed)")
    for name in ("Q4_WORK_QUEUE_URL",):
        attributes = sqs.get_queue_attributes(
            QueueUrl=aws[name],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if any(int(v) for v in attributes.values()):
            result.problems.append(f"{name} not empty: {attributes}")
    if dlq and _count(sqs, dlq) > dlq_before:
        result.problems.append(f"the DLQ went from {dlq_before} to {_count(sqs, dlq)} message(s)")
    return result


def _count(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def _plan_counts(planned: list[dict[str, Any]]) -> dict[str, Any]:
    """What the plan asked for: runs by expected outcome, by mode and (succeeding runs) by rows."""
    return {
        "expect": dict(Counter(p["expect"] for p in planned)),
        "mode": dict(Counter(p["mode"] for p in planned if p["expect"] != "rejected")),
        "rows": {str(k): v for k, v in sorted(Counter(p["rows"] for p in planned if p["rows"]).items())},
        "parquet_output": sum(1 for p in planned if p["body"].get("output_format") == "parquet"),
    }


def main(argv: list[str] | None = None) -> int:
    # the result file's machine/date block; imported here because tests load this file by path
    from record import begin, write_result

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".q4" / "load")
    parser.add_argument("--max-tasks", type=int, default=2, help="for a stack this script starts (default 2)")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for every done message")
    parser.add_argument(
        "--settle", type=float, default=20, help="seconds to keep draining after the last one"
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--shards", type=int, help="every valid message asks for this many shards")
    parser.add_argument("--json", type=Path, help="write the summary and per-run details here")
    parser.add_argument("--note", help="recorded in the result file, e.g. 'shared machine: ...'")
    parser.add_argument("--result", type=Path, help="result file (default benchmarks/results/load.json)")
    args = parser.parse_args(argv)
    start = begin()
    state_dir = args.state_dir.resolve()
    clock = time.monotonic()
    aws, started = stack_up(state_dir, args.max_tasks)
    stack_s = time.monotonic() - clock
    print(f"load: stack {'started' if started else 'reused'} in {stack_s:.0f} s", file=sys.stderr)
    try:
        result = run_load(
            aws,
            state_dir,
            args.runs,
            seed=args.seed,
            timeout=args.timeout,
            settle=args.settle,
            shards=args.shards,
        )
    finally:
        if not args.keep and started:
            stack_down(state_dir)
    summary = result.summary()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps({"summary": summary, "result": asdict(result)}, indent=1, default=str)
        )
    path = write_result(
        "load",
        parameters={
            "runs": args.runs,
            "seed": args.seed,
            "shards": args.shards,
            "max_tasks": args.max_tasks,
            "timeout_s": args.timeout,
            "settle_s": args.settle,
            "stack": {"started": started, "seconds": round(stack_s, 1)},
            "plan": _plan_counts(result.planned),
        },
        figures=summary,
        start=start,
        libraries=("q4-pipeline", "numpy", "pyarrow", "boto3", "moto", "aws-lambda-powertools"),
        note=args.note,
        path=args.result,
    )
    print(f"load: result in {path}", file=sys.stderr)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
