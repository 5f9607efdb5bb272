"""Hostile work messages through the real orchestrator handler (Powertools batch, real SQS and S3 in the moto
server): each is deleted at once with exactly one ``rejected`` done message — which must fit in SQS — and
nothing is launched or written."""

from __future__ import annotations

import json

from q4_orchestrator.handler import lambda_handler
from support.pipeline import Pipeline, artifact_keys, deliver_batches, drain, queue_depth, send_work, tasks_of

VALID = {"run_id": "r1", "input_key": "run=r1/input/x.csv"}
HOSTILE = [
    ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ("9" * 5000, "invalid_json"),
    (json.dumps({**VALID, "svd_k": 1}).replace("1}", "9" * 5000 + "}"), "invalid_json"),
    (json.dumps({**VALID, "mode": "x" * 250_000}), "unknown_mode"),
    (json.dumps({"run_id": "\ue000" * 60_000, "input_key": "x"}, ensure_ascii=False), "invalid_run_id"),
    (json.dumps({**VALID, **{f"e{i}": 0 for i in range(15_000)}}), "unknown_field"),
    (json.dumps({"run_id": "r\n", "input_key": "run=r\n/input/x.csv"}), "invalid_run_id"),
    (json.dumps({"run_id": "0..", "input_key": "run=0../input/x.csv"}), "invalid_run_id"),
    (json.dumps({"run_id": "r1", "input_key": "run=r1/input/\ud800.csv"}), "invalid_key"),
    (json.dumps({**VALID, "features": ["a", "\udfff"]}), "invalid_features"),
]


def test_hostile_messages_are_rejected_with_a_done_message_that_fits(pipeline: Pipeline) -> None:
    for body, _ in HOSTILE:
        assert len(body.encode("utf-8")) < 256 * 1024  # SQS accepted the work message, so must we
        send_work(pipeline, body)
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    assert (delivery.received, delivery.deleted, delivery.failed) == (len(HOSTILE), len(HOSTILE), 0)
    done = drain(pipeline.done_queue_url)
    assert sorted(m["error"]["code"] for m in done) == sorted(code for _, code in HOSTILE)
    for message in done:
        assert message["status"] == "rejected"
        assert message["artifacts_prefix"] in (None, f"run={message['run_id']}/")
        assert len(message["error"]["message"]) <= 1000 and "\n" not in message["error"]["message"]
    assert tasks_of(pipeline) == [] and artifact_keys(pipeline) == []
    assert queue_depth(pipeline.work_queue_url) == 0 and queue_depth(pipeline.dlq_url) == 0
