"""`q4 local up --task-image REF`: the local stack runs every task inside the task image, as Fargate would run
it (the image's command, its non-root user, a read-only root, /scratch), and the run's MANIFEST names the
image. One standard and one full job go through the queue as a user sends them (`q4 submit --wait`), then
`q4 fetch` checks every artifact against the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.stack_runs import client, table

Q4 = str(Path(sys.executable).parent / "q4")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["standard", "full"])
def test_a_job_runs_inside_the_image_and_its_manifest_names_it(
    image_stack: dict[str, Any], tmp_path: Path, mode: str
) -> None:
    # GIVEN a table on disk and the stack that runs tasks inside the image
    data = tmp_path / "table.csv"
    data.write_bytes(table(2000))
    env = {**image_stack["env"], **image_stack["aws"]}
    run_id = f"in-image-{mode}"

    # WHEN the user submits it and waits, then fetches the run
    submitted = subprocess.run(
        [Q4, "submit", str(data), "--run-id", run_id, "--mode", mode, "--wait", "--timeout", "400"],
        env=env, capture_output=True, text=True, timeout=450, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    fetched = subprocess.run(
        [Q4, "fetch", run_id, "--to", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr

    # THEN the task ran inside the image: the MANIFEST's compute names it, and the artifacts are complete
    manifest = json.loads((tmp_path / "out" / f"run={run_id}" / "MANIFEST.json").read_text())
    assert manifest["compute"]["image"] == image_stack["image"], manifest["compute"]
    assert manifest["compute"].get("image_id")
    keys = {artifact["key"] for artifact in manifest["artifacts"]}
    assert "output/Q_keep.csv" in keys and "output/er.json" in keys
    if mode == "full":
        assert "viz/report.html" in keys
    # AND the job it ran is the one sent
    s3 = client(image_stack["aws"], "s3")
    job = json.loads(
        s3.get_object(Bucket=image_stack["aws"]["Q4_ARTIFACTS_BUCKET"], Key=f"run={run_id}/job.json")[
            "Body"
        ].read()
    )
    assert job["mode"] == mode
