"""infrastructure/ is fmt-clean, valid, documented, and its copy for emulators never touches the repo."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from q4_deploy import terraform as tf

MODULE = tf.MODULE_DIR


def test_terraform_fmt_is_clean(terraform_binary: str) -> None:
    result = subprocess.run(
        [terraform_binary, "fmt", "-check", "-recursive", "-diff", "-no-color"],
        cwd=MODULE,
        capture_output=True,
        text=True,
        check=False,
        env=tf.terraform_env(MODULE, mirror=None),
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}"


def test_terraform_validate_passes(initialized_module: tuple[Path, dict[str, str]]) -> None:
    workdir, env = initialized_module
    report = tf.validate(workdir, env)
    assert report["valid"] is True
    assert report["warning_count"] == 0, report["diagnostics"]


def test_validate_reports_a_broken_module(initialized_module: tuple[Path, dict[str, str]]) -> None:
    workdir, env = initialized_module
    broken = workdir / "zz_broken_override.tf"
    broken.write_text('output "broken" {\n  value = aws_sqs_queue.does_not_exist.url\n}\n')
    try:
        with pytest.raises(tf.TerraformError, match="validate failed"):
            tf.validate(workdir, env)
    finally:
        broken.unlink()


def _blocks(kind: str) -> dict[str, str]:
    """``{name: body}`` of every top-level ``variable``/``output`` block in the root module."""
    text = "\n".join(p.read_text() for p in sorted(MODULE.glob("*.tf")))
    return dict(re.findall(rf'^{kind} "([^"]+)" {{\n(.*?)^}}', text, flags=re.M | re.S))


def test_every_variable_has_description_and_type_and_every_output_a_description() -> None:
    variables, outputs = _blocks("variable"), _blocks("output")
    assert len(variables) >= 20 and len(outputs) >= 9
    for name, body in variables.items():
        assert re.search(r"^  description = \"", body, re.M), f"variable {name} has no description"
        assert re.search(r"^  type        = ", body, re.M), f"variable {name} has no type"
    for name, body in outputs.items():
        assert "description" in body, f"output {name} has no description"


def test_variables_are_all_in_variables_tf_and_outputs_in_outputs_tf() -> None:
    for path in MODULE.glob("*.tf"):
        text = path.read_text()
        if path.name != "variables.tf":
            assert not re.search(r'^variable "', text, re.M), f"{path.name} declares a variable"
        if path.name != "outputs.tf":
            assert not re.search(r'^output "', text, re.M), f"{path.name} declares an output"


def test_module_copy_leaves_out_state_caches_and_overrides(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / ".terraform" / "providers").mkdir(parents=True)
    (source / "main.tf").write_text("# main\n")
    (source / "terraform.tfstate").write_text("{}")
    (source / "local_override.tf").write_text("# override\n")
    (source / "modules" / "x").mkdir(parents=True)
    (source / "modules" / "x" / "main.tf").write_text("# module\n")

    copy = tf.copy_module(tmp_path / "copy", source=source)

    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "main.tf",
        "modules/x/main.tf",
    ]


def test_emulator_override_points_every_used_service_at_the_endpoint(tmp_path: Path) -> None:
    path = tf.write_emulator_override(tmp_path, "http://127.0.0.1:4566")
    assert path.name.endswith("_override.tf")
    text = path.read_text()
    services = set(re.findall(r"^\s+(\w+)\s+= \"http://127\.0\.0\.1:4566\"$", text, re.M))
    assert services == set(tf.EMULATED_SERVICES)
    used = {"s3", "sqs", "ecs", "ecr", "iam", "lambda", "events", "logs", "ec2", "sts", "configservice"}
    assert used <= services


def test_out_of_range_inputs_are_refused_with_the_variables_own_message(
    initialized_module: tuple[Path, dict[str, str]],
) -> None:
    workdir, env = initialized_module
    offline = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    offline |= {
        "AWS_ACCESS_KEY_ID": "invalid",
        "AWS_SECRET_ACCESS_KEY": "invalid",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    bad = {
        "config_recording": "everything",
        "task_cpu": 300,
        "lambda_timeout": 901,
        "name": "Q4_Prod",
        "max_shards": 1001,
        "shard_target_bytes": 100,
    }
    with pytest.raises(tf.TerraformError) as raised:
        tf.run(
            workdir,
            ["plan", "-input=false", "-no-color", "-refresh=false", *tf.var_args(bad)],
            offline,
            timeout=120,
        )
    stderr = raised.value.details["stderr"]
    assert "config_recording must be off, minimal or broad." in stderr
    assert "task_cpu must be one of 256, 512, 1024, 2048, 4096, 8192, 16384." in stderr
    assert "lambda_timeout must be between 3 and 900 seconds." in stderr
    assert "The name must be 2-20 lowercase letters" in stderr
    assert "max_shards must be a whole number from 1 to 1000." in stderr
    assert "shard_target_bytes must be a whole number of bytes, at least 4096." in stderr
