"""The real ``q4-task`` (a subprocess, against the moto server) on input objects whose names S3 allows but a
file system does not take as they are: a 300-character name, and ``x.csv`` beside ``x.csv/y.csv``."""

from __future__ import annotations

import json

from support.pipeline import Pipeline, accept, drain, keys, put, read, run_task, table


def test_hostile_object_names_under_an_input_prefix(pipeline: Pipeline, aws_env: dict[str, str]) -> None:
    names = ["run=hk/input/p/" + "n" * 300 + ".csv", "run=hk/input/p/x.csv", "run=hk/input/p/x.csv/y.csv"]
    for i, key in enumerate(names):
        put(pipeline.archive_bucket, key, table(20, seed=i))
    job = accept(pipeline, {"run_id": "hk", "input_prefix": "run=hk/input/p/"})
    process = run_task(pipeline, aws_env, job)
    assert process.returncode == 0, process.stdout[-2000:]
    manifest = json.loads(read(pipeline.artifacts_bucket, "run=hk/MANIFEST.json"))
    assert [i["key"] for i in manifest["inputs"]] == sorted(names) and manifest["rows"]["input"] == 60
    assert all(k.startswith("run=hk/") for k in keys(pipeline.artifacts_bucket))
    assert [d["status"] for d in drain(pipeline.done_queue_url)] == ["succeeded"]


def test_a_dot_segment_in_a_listed_key_is_refused(pipeline: Pipeline, aws_env: dict[str, str]) -> None:
    put(pipeline.archive_bucket, "run=hd/input/p/ok.csv", table(20))
    put(pipeline.archive_bucket, "run=hd/input/p/./sneaky.csv", table(20))
    job = accept(pipeline, {"run_id": "hd", "input_prefix": "run=hd/input/p/"})
    process = run_task(pipeline, aws_env, job)
    assert process.returncode == 2
    error = json.loads(read(pipeline.artifacts_bucket, "run=hd/ERROR.json"))
    assert error["code"] == "invalid_input_key" and "sneaky" in error["message"]
    assert [d["status"] for d in drain(pipeline.done_queue_url)] == ["failed"]
