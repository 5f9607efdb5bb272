"""Runs create no control-plane resource: an inventory of every one in the emulator (buckets, queues,
functions, event source mappings, roles, policies, clusters, task definitions, services, rules, log groups,
repositories), taken before and after a small load of runs that succeed, fail, are rejected and are
cancelled, is the same. Log streams and tasks are the data plane: counted apart, and they grow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.stack_runs import ONE_FEATURE, client, done_messages, submit, table

pytestmark = pytest.mark.slow

#: SQS attributes that move with the messages, not with the configuration.
_QUEUE_COUNTERS = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
_QUEUE_COUNTERS += ("ApproximateNumberOfMessagesDelayed",)
_MAPPING_FIELDS = ("EventSourceArn", "FunctionArn", "BatchSize", "State", "FunctionResponseTypes")


def _pages(method: Any, key: str, **kwargs: Any) -> list[Any]:
    paginator = method.__self__.get_paginator(method.__name__)
    return [item for page in paginator.paginate(**kwargs) for item in page[key]]


def _iam(aws: dict[str, str]) -> dict[str, Any]:
    iam = client(aws, "iam")
    roles = {}
    for role in _pages(iam.list_roles, "Roles"):
        name = role["RoleName"]
        inline = {
            policy: iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            for policy in _pages(iam.list_role_policies, "PolicyNames", RoleName=name)
        }
        attached = _pages(iam.list_attached_role_policies, "AttachedPolicies", RoleName=name)
        roles[role["Arn"]] = {
            "trust": role["AssumeRolePolicyDocument"],
            "inline": inline,
            "attached": sorted(p["PolicyArn"] for p in attached),
        }
    policies = {p["Arn"]: p["DefaultVersionId"] for p in _pages(iam.list_policies, "Policies", Scope="Local")}
    return {"roles": roles, "policies": policies}


def _ecs(aws: dict[str, str]) -> dict[str, Any]:
    ecs = client(aws, "ecs")
    arns = _pages(ecs.list_clusters, "clusterArns")
    described = ecs.describe_clusters(clusters=arns)["clusters"]
    clusters = {c["clusterArn"]: (c["clusterName"], c["status"]) for c in described}
    services = {arn: sorted(_pages(ecs.list_services, "serviceArns", cluster=arn)) for arn in arns}
    definitions = sorted(_pages(ecs.list_task_definitions, "taskDefinitionArns"))
    return {"clusters": clusters, "services": services, "task_definitions": definitions}


def inventory(aws: dict[str, str]) -> dict[str, Any]:
    """Every control-plane resource in the emulator, with the configuration a run could change."""
    sqs, lam, events, logs = (client(aws, s) for s in ("sqs", "lambda", "events", "logs"))
    queues = {}
    for url in sqs.list_queues().get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        queues[url] = {k: v for k, v in attributes.items() if k not in _QUEUE_COUNTERS}
    mappings = {
        m["UUID"]: {k: m.get(k) for k in _MAPPING_FIELDS}
        for m in _pages(lam.list_event_source_mappings, "EventSourceMappings")
    }
    rules = {
        rule["Name"]: {**rule, "targets": events.list_targets_by_rule(Rule=rule["Name"])["Targets"]}
        for rule in events.list_rules()["Rules"]
    }
    groups = {
        g["logGroupName"]: (g.get("arn"), g.get("retentionInDays"), g.get("creationTime"))
        for g in _pages(logs.describe_log_groups, "logGroups")
    }
    repositories = client(aws, "ecr").describe_repositories()["repositories"]
    return {
        "buckets": sorted(b["Name"] for b in client(aws, "s3").list_buckets()["Buckets"]),
        "queues": queues,
        "functions": {f["FunctionArn"]: f for f in _pages(lam.list_functions, "Functions")},
        "event_source_mappings": mappings,
        **_iam(aws),
        **_ecs(aws),
        "rules": rules,
        "log_groups": groups,
        "repositories": {r["repositoryArn"]: r for r in repositories},
    }


def data_plane(aws: dict[str, str]) -> dict[str, int]:
    """What runs do create: log streams (all groups) and tasks (all clusters, running or stopped)."""
    logs, ecs = client(aws, "logs"), client(aws, "ecs")
    streams = sum(
        len(_pages(logs.describe_log_streams, "logStreams", logGroupName=g["logGroupName"]))
        for g in _pages(logs.describe_log_groups, "logGroups")
    )
    tasks = sum(
        len(_pages(ecs.list_tasks, "taskArns", cluster=cluster, desiredStatus=status))
        for cluster in _pages(ecs.list_clusters, "clusterArns")
        for status in ("RUNNING", "STOPPED")
    )
    return {"log_streams": streams, "tasks": tasks}


def test_a_load_of_runs_leaves_the_control_plane_as_it_was(stack):
    aws = stack["aws"]
    before, data_before = inventory(aws), data_plane(aws)
    # the inventory sees what the deployment made (an empty one would prove nothing)
    for kind in ("buckets", "queues", "functions", "event_source_mappings", "roles", "clusters"):
        assert before[kind], kind
    for kind in ("task_definitions", "rules", "log_groups", "repositories"):
        assert before[kind], kind
    # WHEN two runs succeed, one fails on its input, one is rejected (an unknown mode) and one is cancelled
    # (`q4 cancel` before its work message arrives: answered cancelled, never launched)
    client(aws, "s3").put_object(
        Bucket=aws["Q4_ARCHIVE_BUCKET"], Key="run=frozen-cancelled-1/input/table.csv", Body=table(100)
    )
    q4 = str(Path(sys.executable).parent / "q4")
    cancel = subprocess.run(
        [q4, "cancel", "frozen-cancelled-1"], env={**stack["env"], **aws}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert cancel.returncode == 0, cancel.stderr
    submit(aws, "frozen-cancelled-1", None)
    submit(aws, "frozen-ok-1", table(300))
    submit(aws, "frozen-ok-2", table(500), mode="enhanced")
    submit(aws, "frozen-bad-1", ONE_FEATURE)
    submit(aws, "frozen-rejected-1", table(100), mode="turbo")
    runs = ["frozen-ok-1", "frozen-ok-2", "frozen-bad-1", "frozen-rejected-1", "frozen-cancelled-1"]
    done = done_messages(aws, runs)
    assert {run: message["status"] for run, message in done.items()} == {
        "frozen-ok-1": "succeeded",
        "frozen-ok-2": "succeeded",
        "frozen-bad-1": "failed",
        "frozen-rejected-1": "rejected",
        "frozen-cancelled-1": "failed",
    }
    assert done["frozen-cancelled-1"]["error"]["code"] == "cancelled"
    # THEN every control-plane resource is as it was
    after = inventory(aws)
    changed = {kind: (before[kind], after[kind]) for kind in before if before[kind] != after[kind]}
    assert not changed, json.dumps(changed, indent=1, default=str)[:5000]
    # AND the data plane grew: a task and its stream per accepted run, the orchestrator's invocation streams
    data_after = data_plane(aws)
    print(f"\ndata plane before {data_before}, after {data_after}", file=sys.stderr)
    assert data_after["tasks"] - data_before["tasks"] == 3
    assert data_after["log_streams"] - data_before["log_streams"] >= 3 + 1
