"""q4_deploy.terraform: finding the provider mirror and writing the CLI configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from q4_deploy import terraform as tf


def _fake_mirror(root: Path) -> Path:
    (root / "registry.terraform.io" / "hashicorp" / "aws" / "5.100.0" / "linux_amd64").mkdir(parents=True)
    return root


def test_mirror_from_the_environment_wins(tmp_path: Path) -> None:
    mirror = _fake_mirror(tmp_path / "mirror")
    assert tf.find_plugin_mirror({tf.MIRROR_ENV: str(mirror)}, roots=[]) == mirror


def test_empty_mirror_variable_means_use_the_registry(tmp_path: Path) -> None:
    _fake_mirror(tmp_path / "a")
    assert tf.find_plugin_mirror({tf.MIRROR_ENV: ""}, roots=[tmp_path]) is None


def test_a_mirror_variable_without_the_aws_provider_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tf.TerraformError) as raised:
        tf.find_plugin_mirror({tf.MIRROR_ENV: str(tmp_path)}, roots=[])
    assert raised.value.code == "terraform_mirror_invalid"
    assert str(tmp_path) in raised.value.message and "\n" not in raised.value.message


def test_search_finds_a_mirror_within_the_depth_limit_only(tmp_path: Path) -> None:
    mirror = _fake_mirror(tmp_path / "opt" / "tf-plugins")
    assert tf.find_plugin_mirror({}, roots=[tmp_path / "nowhere", tmp_path]) == mirror
    assert tf.find_plugin_mirror({}, roots=[tmp_path], max_depth=1) is None


def test_no_mirror_anywhere_means_the_registry(tmp_path: Path) -> None:
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    assert tf.find_plugin_mirror({}, roots=[tmp_path]) is None


def test_env_with_a_mirror_writes_a_cli_config_in_the_workdir(tmp_path: Path) -> None:
    mirror = _fake_mirror(tmp_path / "mirror")
    env = tf.terraform_env(tmp_path / "work", base_env={"TF_CLI_CONFIG_FILE": "/missing"}, mirror=mirror)
    config = Path(env["TF_CLI_CONFIG_FILE"])
    assert config.parent == tmp_path / "work"
    text = config.read_text()
    assert f'path    = "{mirror}"' in text
    assert 'include = ["registry.terraform.io/hashicorp/aws"]' in text
    assert 'direct {\n    exclude = ["registry.terraform.io/hashicorp/aws"]' in text
    assert env["TF_IN_AUTOMATION"] == "1"


def test_env_without_a_mirror_drops_a_cli_config_that_does_not_exist(tmp_path: Path) -> None:
    env = tf.terraform_env(tmp_path, base_env={"TF_CLI_CONFIG_FILE": str(tmp_path / "nope")}, mirror=None)
    assert "TF_CLI_CONFIG_FILE" not in env
    existing = tmp_path / "rc"
    existing.write_text("")
    env = tf.terraform_env(tmp_path, base_env={"TF_CLI_CONFIG_FILE": str(existing)}, mirror=None)
    assert env["TF_CLI_CONFIG_FILE"] == str(existing)


def test_var_args_pass_non_strings_as_literals() -> None:
    assert tf.var_args({"name": "q4", "force_destroy": True, "subnet_ids": ["a", "b"], "task_cpu": 512}) == [
        "-var", "name=q4",
        "-var", "force_destroy=true",
        "-var", 'subnet_ids=["a", "b"]',
        "-var", "task_cpu=512",
    ]  # fmt: skip


def test_a_failing_command_raises_one_sentence_with_terraforms_error(
    terraform_binary: str, tmp_path: Path
) -> None:
    (tmp_path / "main.tf").write_text('resource "nope" {\n')
    with pytest.raises(tf.TerraformError) as raised:
        tf.run(tmp_path, ["validate", "-no-color"], tf.terraform_env(tmp_path, mirror=None))
    assert raised.value.code == "terraform_failed"
    assert raised.value.message.startswith("terraform validate failed in ")
    assert "\n" not in raised.value.message
