"""Hostile input for the user commands ``q4 submit`` and ``q4 fetch`` (and the ``status`` / ``runs`` they
share), run in-process (``q4.cli.main``) with real boto3 against the real moto server.

``submit``: whatever the run id, the file or the run's history, a refusal is exit 2 with one sentence on
stderr and leaves both buckets, the queues and pending multipart uploads exactly as they were; an input
already uploaded is never overwritten (the upload is ``If-None-Match: *``).

``fetch``: whatever the bucket holds (MANIFEST.json keys with ``..``, absolute paths, NUL, duplicates, a
file that is also a directory, wrong sizes or sha256, missing objects, non-JSON, wrong types, 5 GB claims),
nothing is written outside ``DIR/run=<id>/``, and ``DIR/run=<id>/`` is complete and verified or absent —
never half there, never over a user's files (unless ``--force``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from hypothesis import event, given, settings
from hypothesis import strategies as st
from q4.cli import fetch as cli_fetch
from q4.cli import main
from q4.cli import submit as cli_submit
from support.pipeline import Pipeline, drain, table

HOSTILE = settings.get_profile("hostile")


# ---------------------------------------------------------------- helpers


@pytest.fixture
def user(pipeline: Pipeline, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """The pipeline, with the user's Q4_* variables set (what `eval "$(q4 local env)"` gives)."""
    for key, value in pipeline.user_env.items():
        monkeypatch.setenv(key, value)
    return pipeline


def q4(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``q4 ARGS`` in-process: (exit code, stdout, stderr); argparse's own exits are caught too."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def one_sentence(err: str) -> str:
    """The stderr of a refused command: one line, ``q4: error: ...``, a sentence ending with a full stop
    (optionally followed by the error code, `` [code]``), short."""
    assert err.startswith("q4: error: ") and err.count("\n") == 1, err
    assert re.search(r"\.( \[[a-z0-9_]+\])?\Z", err.rstrip()), err
    assert len(err) < 400, err
    return err


def snapshot(p: Pipeline) -> tuple[set[tuple[str, str, str]], list[int], int]:
    """Every object (bucket, key, ETag) of both buckets, messages per queue, pending multipart uploads."""
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    objects = set()
    for bucket in (p.archive_bucket, p.artifacts_bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects |= {(bucket, o["Key"], o["ETag"]) for o in page.get("Contents", [])}
    depths = []
    for url in (p.work_queue_url, p.done_queue_url):
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        depths.append(sum(int(v) for v in attributes.values()))
    uploads = len(s3.list_multipart_uploads(Bucket=p.archive_bucket).get("Uploads", []))
    return objects, depths, uploads


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def body_of(bucket: str, key: str) -> bytes:
    return bytes(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (files, directories, symlinks), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------- submit: run ids

BAD_RUN_IDS = [
    "",  # was silently replaced by the default run id, and the file uploaded
    "x" * 65,
    "..",
    "a..b",
    "../x",
    "a/b",
    "/abs",
    "ünïcode",
    " r",
    "r ",
    "r\n",
    "r\tx",
    "-r",
    ".r",
    "run=x",
    "x" * 10_000,  # was echoed whole: a 10 kB "sentence"
]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS, ids=range(len(BAD_RUN_IDS)))
def test_submit_refuses_an_invalid_run_id_and_writes_nothing(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], run_id: str
) -> None:
    # GIVEN a good file and an invalid --run-id
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    before = snapshot(user)
    # WHEN it is submitted
    code, out, err = q4(capsys, "submit", str(data), f"--run-id={run_id}")
    # THEN one sentence names the rule, and nothing reached S3 or SQS
    assert code == 2 and out == ""
    assert "run id" in one_sentence(err) and "1-64 letters" in err
    assert snapshot(user) == before


# ---------------------------------------------------------------- submit: files


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    return path


def _symlink(tmp_path: Path, name: str, to: str | Path) -> Path:
    path = tmp_path / name
    path.symlink_to(to)
    return path


def _loop(tmp_path: Path) -> Path:
    (tmp_path / "a.csv").symlink_to(tmp_path / "b.csv")
    (tmp_path / "b.csv").symlink_to(tmp_path / "a.csv")
    return tmp_path / "a.csv"


def _named(tmp_path: Path, name: str | bytes, body: bytes | None = None) -> Path:
    """A file whose name may hold any bytes (Python sees undecodable ones as lone surrogates)."""
    raw = os.fsencode(tmp_path) + b"/" + (name if isinstance(name, bytes) else name.encode())
    with open(raw, "wb") as f:
        f.write(table() if body is None else body)
    return Path(os.fsdecode(raw))


BAD_FILES = {
    "missing": (lambda t: t / "nope.csv", "does not exist"),
    "directory": (lambda t: (t / "dir.csv").mkdir() or t / "dir.csv", "is a directory"),
    "empty": (lambda t: _named(t, "empty.csv", b""), "is empty"),
    "symlink to a directory": (lambda t: _symlink(t, "d.csv", t), "is a directory"),
    "dangling symlink": (lambda t: _symlink(t, "gone.csv", t / "nowhere.csv"), "does not exist"),
    "symlink loop": (_loop, "cannot be opened"),
    "symlink to /dev/zero": (lambda t: _symlink(t, "zero.csv", "/dev/zero"), "not a regular file"),
    "symlink to /proc (0-byte stat)": (lambda t: _symlink(t, "env.csv", "/proc/self/environ"), "is empty"),
    "fifo": (_fifo, "not a regular file"),
    "not csv": (lambda t: _named(t, "notes.txt"), "neither a .csv nor a .parquet"),
    "newline in the name": (lambda t: _named(t, "two\nlines.csv"), "file name"),
    "escape in the name": (lambda t: _named(t, "red\x1b[31m.csv"), "file name"),
    "backslash in the name": (lambda t: _named(t, "a\\..\\b.csv"), "file name"),
    "bytes that are not UTF-8": (lambda t: _named(t, b"caf\xe9.csv"), "file name"),
    "file as a directory": (lambda t: _named(t, "f.csv") / "x.csv", "cannot be opened"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_submit_refuses_an_unusable_file_and_writes_nothing(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    # GIVEN a FILE that cannot become a run's input
    make, phrase = BAD_FILES[case]
    path = make(tmp_path)
    before = snapshot(user)
    # WHEN it is submitted
    code, out, err = q4(capsys, "submit", str(path), "--run-id", "f1")
    # THEN one sentence says what is wrong with it, and nothing reached S3 or SQS
    assert code == 2 and out == ""
    assert phrase in one_sentence(err)
    assert snapshot(user) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_submit_refuses_an_unreadable_file(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "secret.csv"
    data.write_bytes(table())
    data.chmod(0)
    before = snapshot(user)
    code, _, err = q4(capsys, "submit", str(data), "--run-id", "f2")
    assert code == 2 and "cannot be read" in one_sentence(err)
    assert snapshot(user) == before


def test_submit_refuses_an_unknown_mode(user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    before = snapshot(user)
    code, out, err = q4(capsys, "submit", str(data), "--run-id", "m1", "--mode", "turbo; rm -rf /")
    # the work message is checked by the contract before anything is uploaded: its rejection, exit 2
    assert code == 2 and out == ""
    assert "Unknown mode 'turbo; rm -rf /'" in one_sentence(err) and "standard, enhanced, full" in err
    assert not err.rstrip().endswith("]") or err.rstrip().endswith(" [unknown_mode]"), err
    assert snapshot(user) == before


def test_submit_help_shows_the_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = q4(capsys, "submit", "--help")
    assert code == 0 and "--mode {standard,enhanced,full}" in out


@pytest.mark.parametrize("name", ["my data é 🙂.csv", "100% (final) #2 + more.parquet", "ÆØÅ 東京.CSV"])
def test_names_with_spaces_and_unicode_round_trip(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # GIVEN a file whose name has spaces, unicode and URL-special characters
    data = tmp_path / name
    data.write_bytes(table())
    # WHEN it is submitted without a run id
    code, out, err = q4(capsys, "submit", str(data))
    assert code == 0, err
    # THEN the object holds the file under its own name, and the message is one the orchestrator accepts
    (message,) = drain(user.work_queue_url)
    job = contract.parse_job(message)
    assert job.input_key == f"run={job.run_id}/input/{name}" and job.input_key in out
    assert body_of(user.archive_bucket, job.input_key) == table()


# ---------------------------------------------------------------- submit: an existing run


def _job(p: Pipeline, run_id: str, input_name: str = "data.csv") -> None:
    job = contract.parse_job({"run_id": run_id, "input_key": f"run={run_id}/input/{input_name}"})
    boto3.client("s3").put_object(Bucket=p.artifacts_bucket, Key=contract.job_key(run_id), Body=job.to_json())


@pytest.mark.parametrize("terminal", [None, "MANIFEST.json", "ERROR.json"])
@pytest.mark.parametrize("same_file", [True, False])
def test_submit_never_touches_an_accepted_or_finished_run(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], terminal: str | None, same_file: bool
) -> None:
    # GIVEN run e1 accepted (job.json), possibly finished, with its input in the archive
    s3 = boto3.client("s3")
    s3.put_object(Bucket=user.archive_bucket, Key="run=e1/input/data.csv", Body=table())
    _job(user, "e1")
    if terminal:
        s3.put_object(
            Bucket=user.artifacts_bucket, Key=f"run=e1/{terminal}", Body=json.dumps({"run_id": "e1"})
        )
    data = tmp_path / "data.csv"
    data.write_bytes(table() if same_file else table(rows=10))
    before = snapshot(user)
    # WHEN the same run id is submitted again
    code, _, err = q4(capsys, "submit", str(data), "--run-id", "e1")
    # THEN it is refused (`run_exists`), the input is untouched and no message is sent
    assert code == 2 and "already exists" in one_sentence(err) and "q4 status e1" in err
    assert snapshot(user) == before and body_of(user.archive_bucket, "run=e1/input/data.csv") == table()


def test_submit_refuses_a_second_input_for_a_queued_run(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN run q1 submitted (input uploaded, work message queued, no job.json yet)
    first = tmp_path / "first.csv"
    first.write_bytes(table())
    assert q4(capsys, "submit", str(first), "--run-id", "q1")[0] == 0
    before = snapshot(user)
    # WHEN another file is submitted under the same run id
    other = tmp_path / "other.csv"
    other.write_bytes(table(rows=10))
    code, _, err = q4(capsys, "submit", str(other), "--run-id", "q1")
    # THEN it is refused: it used to be uploaded beside the first, with a second, conflicting message
    assert code == 2 and "already has another input" in one_sentence(err) and "first.csv" in err
    assert snapshot(user) == before


def test_resubmitting_the_identical_file_reuses_the_upload(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retry after a failed send: same run id, same bytes -> no second upload, the message re-sent."""
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    assert q4(capsys, "submit", str(data), "--run-id", "r1")[0] == 0
    objects, _, _ = snapshot(user)
    head = boto3.client("s3").head_object(Bucket=user.archive_bucket, Key="run=r1/input/data.csv")
    assert head["Metadata"] == {"q4-sha256": sha(table())}
    code, _, err = q4(capsys, "submit", str(data), "--run-id", "r1")
    assert code == 0, err
    assert snapshot(user)[0] == objects  # the same object (ETag), not a new upload
    assert [m["run_id"] for m in drain(user.work_queue_url)] == ["r1", "r1"]


def test_a_multipart_object_of_the_same_size_is_not_taken_for_the_same_file(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an input uploaded as a multipart object (as `aws s3 cp` does above 8 MB): its ETag is not an MD5
    s3 = boto3.client("s3")
    key = "run=mp1/input/data.csv"
    upload = s3.create_multipart_upload(Bucket=user.archive_bucket, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=user.archive_bucket, Key=key, UploadId=upload, PartNumber=1, Body=table())
    s3.complete_multipart_upload(
        Bucket=user.archive_bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    # WHEN a different file of exactly the same size is submitted under that key
    different = bytearray(table())
    different[-2] = ord("9") if different[-2] != ord("9") else ord("8")
    data = tmp_path / "data.csv"
    data.write_bytes(bytes(different))
    before = snapshot(user)
    code, _, err = q4(capsys, "submit", str(data), "--run-id", "mp1")
    # THEN it is refused: it used to be taken for the same file and a message sent for the other bytes
    assert code == 2 and "never overwritten" in one_sentence(err)
    assert snapshot(user) == before


def test_an_identical_object_without_metadata_is_reused(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An input from scripts/submit_run.sh (`aws s3 cp`, no q4-sha256): a single-part ETag is the MD5."""
    boto3.client("s3").put_object(Bucket=user.archive_bucket, Key="run=sr1/input/data.csv", Body=table())
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    objects = snapshot(user)[0]
    code, _, err = q4(capsys, "submit", str(data), "--run-id", "sr1")
    assert code == 0, err
    assert snapshot(user)[0] == objects and [m["run_id"] for m in drain(user.work_queue_url)] == ["sr1"]


def test_a_concurrent_upload_is_never_overwritten(
    user: Pipeline,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    boto_hooks: Any,
) -> None:
    # GIVEN another client that uploads to the same key just before our upload (after our existence check)
    intruder = boto3.session.Session().client("s3")
    seen: list[dict[str, Any]] = []

    def race(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == "run=race1/input/data.csv" and not seen:
            seen.append(params)
            intruder.put_object(Bucket=user.archive_bucket, Key=params["Key"], Body=b"theirs,x\n1,2\n")

    boto_hooks("provide-client-params.s3.PutObject", race)
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    # WHEN our submit uploads
    code, _, err = q4(capsys, "submit", str(data), "--run-id", "race1")
    # THEN the conditional upload fails, their object stays, and no message is sent
    assert seen and seen[0].get("IfNoneMatch") == "*"
    assert code == 2 and "never overwritten" in one_sentence(err)
    assert body_of(user.archive_bucket, "run=race1/input/data.csv") == b"theirs,x\n1,2\n"
    assert drain(user.work_queue_url) == []


def test_a_large_input_goes_up_as_a_conditional_multipart_upload(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN multipart thresholds of 5 MiB (S3's smallest part) and an 11 MiB file
    monkeypatch.setattr(cli_submit, "SINGLE_PUT_LIMIT", 5 << 20)
    monkeypatch.setattr(cli_submit, "PART_SIZE", 5 << 20)
    body = table() * ((11 << 20) // len(table()) + 1)
    data = tmp_path / "big.csv"
    data.write_bytes(body)
    # WHEN it is submitted, then submitted again
    assert q4(capsys, "submit", str(data), "--run-id", "big1")[0] == 0
    again = q4(capsys, "submit", str(data), "--run-id", "big1")
    # THEN it is one 3-part object with the file's bytes and sha256, recognised as the same file the second
    # time, and no upload is left pending
    head = boto3.client("s3").head_object(Bucket=user.archive_bucket, Key="run=big1/input/big.csv")
    assert head["ETag"].strip('"').endswith("-3") and head["Metadata"] == {"q4-sha256": sha(body)}
    assert body_of(user.archive_bucket, "run=big1/input/big.csv") == body
    assert again[0] == 0 and snapshot(user)[2] == 0


# ---------------------------------------------------------------- fetch: a hostile bucket

FILES = {
    "output/Q_keep.csv": b"a,b\n1,2\n",
    "output/er.json": b'{"snr": 1}\n',
    "viz/report.html": b"<p>hi</p>",
}


def entry(key: str, body: bytes) -> dict[str, Any]:
    return {"key": key, "bytes": len(body), "sha256": sha(body), "content_type": "text/plain"}


def put_run(
    p: Pipeline,
    run_id: str,
    objects: dict[str, bytes] | None = None,
    artifacts: list[Any] | None = None,
    manifest: Any = None,
) -> None:
    """A succeeded run in the artifacts bucket: job.json, ``objects`` under run=<id>/ and a MANIFEST.json
    (listing ``artifacts``, by default every object; or ``manifest`` as given, bytes or JSON)."""
    s3 = boto3.client("s3")
    objects = FILES if objects is None else objects
    for key, body in objects.items():
        s3.put_object(Bucket=p.artifacts_bucket, Key=f"run={run_id}/{key}", Body=body)
    _job(p, run_id)
    if manifest is None:
        listed = [entry(k, b) for k, b in objects.items()] if artifacts is None else artifacts
        manifest = {"schema": "q4.manifest/v1", "run_id": run_id, "status": "succeeded", "artifacts": listed}
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    s3.put_object(Bucket=p.artifacts_bucket, Key=contract.manifest_key(run_id), Body=raw)


def fetch_refused(capsys: pytest.CaptureFixture[str], run_id: str, root: Path, *extra: str) -> str:
    """``q4 fetch RUN_ID --to root/dest``: exit 2, one sentence, and nothing new anywhere under ``root``."""
    before = tree(root)
    code, out, err = q4(capsys, "fetch", run_id, "--to", str(root / "dest"), *extra)
    assert code == 2 and out == "", (out, err)
    one_sentence(err)
    assert [p for p in tree(root) if p not in before and p != "dest"] == []  # no staging dir left either
    return err


def test_fetch_of_a_good_run_writes_exactly_the_verified_files(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a succeeded run, a stray object the manifest does not list, and launch records
    put_run(
        user, "g1", {**FILES, "junk/partial.bin": b"x"}, artifacts=[entry(k, b) for k, b in FILES.items()]
    )
    boto3.client("s3").put_object(Bucket=user.artifacts_bucket, Key="run=g1/attempts/1.json", Body=b"{}")
    # WHEN it is fetched into a directory that already holds a user's other files
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine.txt").write_text("keep me")
    code, out, err = q4(capsys, "fetch", "g1", "--to", str(tmp_path / "dest"))
    # THEN run=g1/ holds the manifest's artifacts, MANIFEST.json and job.json, nothing else
    assert code == 0, err
    assert "3 artifacts, every size and sha256 checked" in out and "left 1 other objects" in out
    run_dir = tmp_path / "dest" / "run=g1"
    assert tree(tmp_path / "dest") == sorted(
        ["mine.txt", "run=g1", "run=g1/MANIFEST.json", "run=g1/job.json", "run=g1/output", "run=g1/viz"]
        + [f"run=g1/{k}" for k in FILES]
    )
    assert all((run_dir / k).read_bytes() == b for k, b in FILES.items())
    assert (tmp_path / "dest" / "mine.txt").read_text() == "keep me"
    assert oct(run_dir.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


HOSTILE_KEYS = [
    "../evil.csv",
    "../../evil.csv",
    "output/../../evil.csv",
    "/tmp/q4-evil.csv",
    "a\\..\\..\\evil.csv",
    "output/\x00evil.csv",
    "output/two\nlines.csv",
    "output/\x1b[31mred.csv",
    "output//x.csv",
    "./x.csv",
    "output/.",
    "output/",
    "",
    "run=other/../../evil.csv",
    "MANIFEST.json",
    "job.json",
    "attempts/1.json",
    "output/" + "é" * 200 + ".csv",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_fetch_refuses_a_manifest_key_that_is_not_a_plain_relative_path(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    # GIVEN a succeeded run whose MANIFEST.json lists, besides good artifacts, a hostile key
    artifacts = [entry(k, b) for k, b in FILES.items()] + [entry(key, b"evil")]
    put_run(user, "k1", artifacts=artifacts)
    # WHEN it is fetched  THEN nothing is written anywhere, and one sentence says the manifest is unusable
    err = fetch_refused(capsys, "k1", tmp_path)
    assert "MANIFEST.json of run k1" in err and "nothing was fetched" in err
    assert not Path("/tmp/q4-evil.csv").exists()


BAD_MANIFESTS: dict[str, tuple[Any, str]] = {
    "not JSON": (b"{not json", "is not valid JSON"),
    "not UTF-8": (b"\xff\xfe{}", "is not valid JSON"),
    "a list": ([], "is a JSON array, not an object"),
    "null": (b"null", "is JSON null, not an object"),
    "another run": ({"run_id": "other", "artifacts": []}, "names another run"),
    "no run id": ({"artifacts": []}, "names another run"),
    "failed status": ({"run_id": "b1", "status": "failed", "artifacts": []}, "has the status"),
    "artifacts a string": ({"run_id": "b1", "artifacts": "output/x"}, "no list of artifacts"),
    "artifact a string": ({"run_id": "b1", "artifacts": ["output/x"]}, "as a JSON string"),
    "key a number": ({"run_id": "b1", "artifacts": [{"key": 5, "bytes": 1, "sha256": "0" * 64}]}, "key 5"),
    "bytes a string": ({"run_id": "b1", "artifacts": [{**entry("o/x", b"x"), "bytes": "1"}]}, "size '1'"),
    "bytes a bool": ({"run_id": "b1", "artifacts": [{**entry("o/x", b"x"), "bytes": True}]}, "size True"),
    "bytes negative": ({"run_id": "b1", "artifacts": [{**entry("o/x", b"x"), "bytes": -1}]}, "size -1"),
    "sha256 missing": ({"run_id": "b1", "artifacts": [{"key": "o/x", "bytes": 1}]}, "sha256 None"),
    "sha256 upper case": (
        {"run_id": "b1", "artifacts": [{**entry("o/x", b"x"), "sha256": "A" * 64}]},
        "sha256",
    ),
    "duplicate": ({"run_id": "b1", "artifacts": [entry("o/x", b"x"), entry("o/x", b"x")]}, "twice"),
    "case duplicate": ({"run_id": "b1", "artifacts": [entry("o/x", b"x"), entry("o/X", b"x")]}, "twice"),
    "file and directory": (
        {"run_id": "b1", "artifacts": [entry("o/x", b"x"), entry("o/x/y", b"y")]},
        "both as a file and as the directory",
    ),
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_fetch_refuses_a_malformed_manifest(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    manifest, phrase = BAD_MANIFESTS[case]
    put_run(user, "b1", {"o/x": b"x", "o/x/y": b"y", "o/X": b"x"}, manifest=manifest)
    err = fetch_refused(capsys, "b1", tmp_path)
    assert phrase in err and "nothing was fetched" in err


def test_status_of_a_run_with_a_corrupt_manifest_is_one_sentence(
    user: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    put_run(user, "c1", manifest=b"{not json")
    code, _, err = q4(capsys, "status", "c1")
    assert code == 2 and "is not valid JSON" in one_sentence(err)


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"bytes": 10**18}, "bytes in s3://"),  # a huge size: refused before anything is downloaded
        ({"bytes": 3}, "bytes in s3://"),
        ({"sha256": sha(b"something else")}, "does not match its sha256"),
    ],
)
def test_fetch_refuses_an_artifact_that_does_not_match_and_leaves_nothing(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], phrase: str
) -> None:
    # GIVEN a run whose last artifact's size or sha256 does not match the object
    artifacts = [entry(k, b) for k, b in FILES.items()]
    artifacts[-1] = {**artifacts[-1], **change}
    put_run(user, "s1", artifacts=artifacts)
    # WHEN it is fetched  THEN nothing that looks complete is left: no run=s1/, no partial files
    err = fetch_refused(capsys, "s1", tmp_path)
    assert phrase in err and "viz/report.html" in err and "nothing was fetched" in err


def test_fetch_refuses_a_run_with_a_missing_artifact(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_run(user, "m1", artifacts=[entry(k, b) for k, b in FILES.items()] + [entry("output/gone.csv", b"x")])
    err = fetch_refused(capsys, "m1", tmp_path)
    assert "output/gone.csv is listed in MANIFEST.json of run m1 but missing" in err


def test_an_object_changed_during_the_download_leaves_nothing(
    user: Pipeline,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    boto_hooks: Any,
) -> None:
    # GIVEN a good run whose last artifact is replaced (same size) once fetch has listed the bucket
    put_run(user, "t1")
    intruder = boto3.session.Session().client("s3")

    def swap(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == "run=t1/viz/report.html":
            intruder.put_object(Bucket=user.artifacts_bucket, Key=params["Key"], Body=b"<p>HI</p>")

    boto_hooks("provide-client-params.s3.HeadObject", swap)
    # THEN the sha256 check catches it, and the files already downloaded are gone too
    assert "does not match its sha256" in fetch_refused(capsys, "t1", tmp_path)


def test_fetch_of_a_failed_run_gets_its_error_and_not_its_partial_outputs(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a failed run with a hostile ERROR.json message and a partial output left by a crashed attempt
    s3 = boto3.client("s3")
    _job(user, "e1")
    error = {"run_id": "e1", "code": "too_few_rows", "message": "Too few rows.\x1b[2J\nreally"}
    s3.put_object(Bucket=user.artifacts_bucket, Key="run=e1/ERROR.json", Body=json.dumps(error))
    s3.put_object(Bucket=user.artifacts_bucket, Key="run=e1/output/Q_keep.csv", Body=b"partial")
    code, out, err = q4(capsys, "fetch", "e1", "--to", str(tmp_path / "dest"))
    assert code == 0, err
    assert tree(tmp_path / "dest") == ["run=e1", "run=e1/ERROR.json", "run=e1/job.json"]
    assert "the run failed: Too few rows.\\x1b[2J\\nreally" in out and "\x1b" not in out
    assert "left 1 other objects" in out


def test_fetch_of_a_failed_run_with_an_error_json_that_is_not_json(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boto3.client("s3").put_object(Bucket=user.artifacts_bucket, Key="run=e2/ERROR.json", Body=b"\xff oops")
    code, out, err = q4(capsys, "fetch", "e2", "--to", str(tmp_path / "dest"))
    assert code == 0, err
    assert (
        "ERROR.json is not valid JSON" in out
        and (tmp_path / "dest/run=e2/ERROR.json").read_bytes() == b"\xff oops"
    )


@pytest.mark.parametrize("state", ["accepted", "submitted", "unknown"])
def test_fetch_of_an_unfinished_run_creates_nothing(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    if state != "unknown":
        boto3.client("s3").put_object(Bucket=user.archive_bucket, Key="run=u1/input/d.csv", Body=table())
    if state == "accepted":
        _job(user, "u1", "d.csv")
    err = fetch_refused(capsys, "u1", tmp_path)
    assert (f"has not finished ({state})" if state != "unknown" else "No run u1") in err
    assert not (tmp_path / "dest").exists()


def test_fetch_never_overwrites_an_existing_run_directory_without_force(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN DIR/run=f1/ already holding a user's edited file
    put_run(user, "f1")
    mine = tmp_path / "dest" / "run=f1" / "output" / "Q_keep.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("my edits")
    # WHEN fetched without --force  THEN refused, the user's file untouched
    err = fetch_refused(capsys, "f1", tmp_path)
    assert "already exists" in err and "--force" in err and mine.read_text() == "my edits"
    # WHEN fetched with --force  THEN replaced by the verified download, nothing else left behind
    code, _, err = q4(capsys, "fetch", "f1", "--to", str(tmp_path / "dest"), "--force")
    assert code == 0, err
    assert mine.read_bytes() == FILES["output/Q_keep.csv"] and tree(tmp_path / "dest")[0] == "run=f1"
    assert not [p for p in tree(tmp_path / "dest") if p.startswith(".")]


def test_force_with_a_failed_verification_keeps_the_old_directory(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_run(user, "f2", artifacts=[{**entry(k, b), "sha256": sha(b"no")} for k, b in FILES.items()])
    mine = tmp_path / "dest" / "run=f2" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    assert "does not match" in fetch_refused(capsys, "f2", tmp_path, "--force")
    assert tree(tmp_path / "dest") == ["run=f2", "run=f2/notes.txt"]


def test_a_symlinked_run_directory_is_never_written_through(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN DIR/run=l1 is a symlink to a directory elsewhere
    put_run(user, "l1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "run=l1").symlink_to(elsewhere)
    # THEN fetch refuses; with --force it replaces the link (not its target) with the real directory
    assert "already exists" in fetch_refused(capsys, "l1", tmp_path)
    assert q4(capsys, "fetch", "l1", "--to", str(tmp_path / "dest"), "--force")[0] == 0
    assert not (tmp_path / "dest" / "run=l1").is_symlink() and list(elsewhere.iterdir()) == []


def test_a_destination_that_is_a_file_is_refused(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_run(user, "d1")
    (tmp_path / "dest").write_text("a file")
    assert "is a file, not a directory" in fetch_refused(capsys, "d1", tmp_path)
    (tmp_path / "dest").unlink()
    (tmp_path / "file").write_text("x")
    code, _, err = q4(capsys, "fetch", "d1", "--to", str(tmp_path / "file" / "sub"))
    assert code == 2 and "Cannot create" in one_sentence(err) and "(Not a directory)" in err


def test_a_manifest_claiming_more_than_the_free_space_is_refused(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    put_run(user, "sp1")
    real = cli_fetch.shutil.disk_usage
    monkeypatch.setattr(cli_fetch.shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    assert "bytes but" in fetch_refused(capsys, "sp1", tmp_path)


def test_an_oversized_manifest_is_not_read(
    user: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_fetch, "MAX_MANIFEST_BYTES", 100)
    put_run(user, "big1", manifest={"run_id": "big1", "artifacts": [], "pad": "x" * 200})
    assert "MANIFEST.json of run big1 is 2" in fetch_refused(capsys, "big1", tmp_path)


def test_runs_shows_a_hostile_run_id_escaped(user: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    boto3.client("s3").put_object(Bucket=user.archive_bucket, Key="run=\x1b[2Jx/input/a.csv", Body=b"a\n")
    code, out, _ = q4(capsys, "runs")
    assert code == 0 and "\\x1b[2Jx" in out and "\x1b" not in out


# ---------------------------------------------------------------- fetch: generated manifests

plain = st.sampled_from(["output", "viz", "a", "Q_keep.csv", "er.json", "é ü.csv", "x y", "A", "a.csv"])
hostile = st.sampled_from(["", ".", "..", "\\", "\x00", "\n", "/", "MANIFEST.json"]) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6
)
# two plain keys for every hostile one, so that both outcomes (fetched, refused) are exercised
plain_key = st.lists(plain, min_size=1, max_size=3).map("/".join)
hostile_key = st.lists(plain | hostile, min_size=1, max_size=4).map("/".join)
manifest_keys = plain_key | plain_key | hostile_key


@settings(HOSTILE, max_examples=40)
@given(
    keys=st.lists(manifest_keys, min_size=1, max_size=4, unique=True),
    corrupt=st.sampled_from([False, False, True]),
)
def test_generated_manifests_never_write_outside_the_run_directory(
    user: Pipeline,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    keys: list[str],
    corrupt: bool,
) -> None:
    """Any manifest keys, objects put where S3 takes them: fetch either succeeds with exactly the listed
    files, verified, or refuses with nothing written; never a file outside DIR/run=<id>/."""
    root = tmp_path_factory.mktemp("gen")
    run_id = f"h{root.name.replace('_', '-')}"[-60:]
    objects: dict[str, bytes] = {}
    s3 = boto3.client("s3")
    for i, key in enumerate(keys):
        try:
            s3.put_object(Bucket=user.artifacts_bucket, Key=f"run={run_id}/{key}", Body=f"{i}".encode())
            objects[key] = f"{i}".encode()
        except Exception:  # keys S3 or botocore refuse (NUL, ...): listed, never uploaded
            pass
    artifacts = [entry(k, f"{i}".encode()) for i, k in enumerate(keys)]
    if corrupt:
        artifacts[0]["sha256"] = sha(b"other")
    put_run(user, run_id, objects={}, artifacts=artifacts)
    dest = root / "dest"
    code, _, err = q4(capsys, "fetch", run_id, "--to", str(dest))
    written = tree(root)
    event(f"exit {code}")
    assert all(p == "dest" or p.startswith(f"dest/run={run_id}") for p in written), written
    if code == 0:
        run_dir = dest / f"run={run_id}"
        assert not corrupt
        files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
        assert files == {*keys, "MANIFEST.json", "job.json"}
        assert all((run_dir / k).read_bytes() == objects[k] for k in keys)
    else:
        assert code == 2 and written in ([], ["dest"]), written
        one_sentence(err)
