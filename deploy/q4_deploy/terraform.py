"""Run the real ``terraform`` on ``infrastructure/``: for the tests, the local stack and the deploy script.

Terraform always runs in a *copy* of the module (:func:`copy_module`) so that state, ``.terraform/`` and
emulator overrides never touch the committed files. Offline machines keep the AWS provider in a filesystem
mirror; :func:`terraform_env` finds it (``Q4_TF_PLUGIN_MIRROR`` or a bounded search of the usual places) and
writes a CLI configuration that installs ``hashicorp/aws`` from it and everything else from the registry.

Typical use::

    workdir = copy_module(tmp / "tf")
    write_emulator_override(workdir, "http://127.0.0.1:5000")
    env = terraform_env(workdir, base_env=emulator_env)
    init(workdir, env)
    apply(workdir, env, {"force_destroy": True, "event_source_mapping_enabled": False})
    outputs = output_json(workdir, env)
    assert plan(workdir, env, {"force_destroy": True, "event_source_mapping_enabled": False}).clean
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from q4.errors import Q4Error

#: The committed Terraform module (``infrastructure/`` at the repository root).
MODULE_DIR = Path(__file__).resolve().parents[2] / "infrastructure"

MIRROR_ENV = "Q4_TF_PLUGIN_MIRROR"
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
CLI_CONFIG_NAME = "q4.terraformrc"
OVERRIDE_NAME = "q4_emulator_override.tf"

# Services the module talks to; each gets the emulator endpoint in the override.
EMULATED_SERVICES = (
    "cloudwatch",
    "configservice",
    "ec2",
    "ecr",
    "ecs",
    "events",
    "iam",
    "lambda",
    "logs",
    "s3",
    "sqs",
    "sts",
)
_SKIPPED_IN_COPY = (
    ".terraform",
    "terraform.tfstate",
    "terraform.tfstate.backup",
    ".terraform.tfstate.lock.info",
)


class TerraformError(Q4Error):
    """Terraform is missing or one of its commands failed."""


def _mirror_roots() -> list[Path]:
    """Where a filesystem mirror may live: implied local mirror dirs, then common install roots."""
    home = Path.home()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    data_dirs = [
        Path(p) for p in (os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":") if p
    ]
    implied = [home / ".terraform.d" / "plugins", data_home / "terraform" / "plugins"]
    implied += [d / "terraform" / "plugins" for d in data_dirs]
    return [*implied, Path("/opt"), Path("/usr/local/share"), Path("/usr/share"), home]


def _has_aws_provider(mirror: Path) -> bool:
    return (mirror / AWS_PROVIDER).is_dir()


def _search(root: Path, max_depth: int) -> Path | None:
    """Breadth-first search under ``root`` for a directory holding ``registry.terraform.io/hashicorp/aws``."""
    level = [root]
    for _ in range(max_depth + 1):
        next_level: list[Path] = []
        for directory in level:
            if _has_aws_provider(directory):
                return directory
            try:
                children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
            next_level += [
                p for p in children if p.name not in {".terraform", ".git", "node_modules", ".venv"}
            ]
        level = next_level
    return None


def find_plugin_mirror(
    environ: Mapping[str, str] | None = None, roots: Iterable[Path] | None = None, max_depth: int = 3
) -> Path | None:
    """The filesystem mirror directory holding the AWS provider, or None to use the registry.

    ``Q4_TF_PLUGIN_MIRROR`` wins when set (an empty value disables the search); otherwise the first of
    :func:`_mirror_roots` (or ``roots``) with a mirror up to ``max_depth`` levels down.
    """
    environ = os.environ if environ is None else environ
    if MIRROR_ENV in environ:
        value = environ[MIRROR_ENV]
        if not value:
            return None
        mirror = Path(value).expanduser()
        if not _has_aws_provider(mirror):
            raise TerraformError(
                "terraform_mirror_invalid",
                f"{MIRROR_ENV}={value} holds no {AWS_PROVIDER}; point it at the directory that contains "
                "registry.terraform.io, or unset it.",
            )
        return mirror
    for root in roots if roots is not None else _mirror_roots():
        if root.is_dir():
            found = _search(root, max_depth)
            if found is not None:
                return found
    return None


def cli_config(mirror: Path) -> str:
    """A Terraform CLI configuration: hashicorp/aws from ``mirror``, other providers from their registry."""
    path = json.dumps(str(mirror))
    return (
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = {path}\n    include = ["{AWS_PROVIDER}"]\n  }}\n'
        f'  direct {{\n    exclude = ["{AWS_PROVIDER}"]\n  }}\n'
        "}\n"
    )


def terraform_env(
    workdir: Path, base_env: Mapping[str, str] | None = None, mirror: Path | bool | None = True
) -> dict[str, str]:
    """Environment for running terraform in ``workdir``.

    ``mirror=True`` looks for a plugin mirror (:func:`find_plugin_mirror`), a path uses that mirror,
    ``None``/``False`` uses the registry. With a mirror, a CLI configuration is written into ``workdir``
    and ``TF_CLI_CONFIG_FILE`` points at it; without one, a ``TF_CLI_CONFIG_FILE`` naming a missing file
    is dropped (terraform would warn on every command).
    """
    env = dict(os.environ if base_env is None else base_env)
    env.update({"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"})
    found = find_plugin_mirror(env) if mirror is True else (mirror or None)
    if isinstance(found, Path):
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / CLI_CONFIG_NAME
        config.write_text(cli_config(found))
        env["TF_CLI_CONFIG_FILE"] = str(config)
    elif env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).is_file():
        del env["TF_CLI_CONFIG_FILE"]
    return env


def copy_module(dest: Path, source: Path = MODULE_DIR) -> Path:
    """Copy the Terraform module to ``dest`` (without state, caches or overrides); returns ``dest``."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n in _SKIPPED_IN_COPY or n.endswith("_override.tf")]

    shutil.copytree(source, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


def emulator_override(endpoint_url: str) -> str:
    """A provider override (``*_override.tf``) pointing every service the module uses at an emulator."""
    endpoints = "\n".join(f"    {name:<17} = {json.dumps(endpoint_url)}" for name in EMULATED_SERVICES)
    return (
        "# Written by q4_deploy.terraform for an emulator; never commit.\n"
        'provider "aws" {\n'
        '  access_key                  = "testing"\n'
        '  secret_key                  = "testing"\n'
        "  skip_credentials_validation = true\n"
        "  skip_metadata_api_check     = true\n"
        "  skip_region_validation      = true\n"
        "  s3_use_path_style           = true\n"
        f"  endpoints {{\n{endpoints}\n  }}\n"
        "}\n"
    )


def write_emulator_override(workdir: Path, endpoint_url: str) -> Path:
    """Write :func:`emulator_override` into the module copy at ``workdir``."""
    path = workdir / OVERRIDE_NAME
    path.write_text(emulator_override(endpoint_url))
    return path


def run(
    workdir: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    capture: bool = True,
    timeout: float | None = 1800,
    ok_codes: Collection[int] = (0,),
) -> subprocess.CompletedProcess[str]:
    """Run ``terraform <args>`` in ``workdir``; an exit code not in ``ok_codes`` raises
    :class:`TerraformError` with its last error lines."""
    binary = shutil.which("terraform", path=env.get("PATH"))
    if binary is None:
        raise TerraformError(
            "terraform_missing", "terraform is not on PATH; install Terraform >= 1.6 and try again."
        )
    try:
        result = subprocess.run(
            [binary, *args],
            cwd=workdir,
            env=dict(env),
            text=True,
            timeout=timeout,
            capture_output=capture,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TerraformError(
            "terraform_timeout", f"terraform {args[0]} did not finish within {timeout:.0f} s."
        ) from exc
    if result.returncode not in ok_codes:
        tail = _error_summary(result.stderr or "")
        raise TerraformError(
            "terraform_failed",
            f"terraform {args[0]} failed in {workdir}: {tail or 'see its output above'}.",
            {"returncode": result.returncode, "stderr": (result.stderr or "")[-16000:]},
        )
    return result


def _error_summary(stderr: str) -> str:
    """The first `Error:` line of terraform's output, without box-drawing decoration."""
    for line in stderr.splitlines():
        text = line.strip(" │╷╵\t")
        if text.startswith("Error:"):
            return text.removeprefix("Error:").strip().rstrip(".")
    lines = [ln.strip(" │╷╵\t") for ln in stderr.splitlines() if ln.strip(" │╷╵\t")]
    return lines[-1].rstrip(".") if lines else ""


def var_args(variables: Mapping[str, Any] | None) -> list[str]:
    """``-var`` arguments; values that are not strings are passed as HCL/JSON literals."""
    args: list[str] = []
    for name, value in (variables or {}).items():
        literal = value if isinstance(value, str) else json.dumps(value)
        args += ["-var", f"{name}={literal}"]
    return args


def init(workdir: Path, env: Mapping[str, str], *, backend: bool = False) -> None:
    """``terraform init`` (local state unless ``backend``; no lock-file upgrades)."""
    args = ["init", "-input=false", "-no-color"]
    if not backend:
        args.append("-backend=false")
    run(workdir, args, env)


def validate(workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """``terraform validate -json`` (after :func:`init`); returns its report, raises when invalid."""
    result = subprocess.run(
        ["terraform", "validate", "-json", "-no-color"],
        cwd=workdir,
        env=dict(env),
        text=True,
        capture_output=True,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout or "{}")
    if not report.get("valid"):
        messages = "; ".join(d.get("summary", "") for d in report.get("diagnostics", []))
        raise TerraformError("terraform_invalid", f"terraform validate failed: {messages or result.stderr}.")
    return report


def apply(
    workdir: Path,
    env: Mapping[str, str],
    variables: Mapping[str, Any] | None = None,
    *,
    parallelism: int = 10,
    capture: bool = True,
    timeout: float | None = 1800,
) -> None:
    """``terraform apply -auto-approve`` with ``variables``."""
    args = ["apply", "-auto-approve", "-input=false", "-no-color", f"-parallelism={parallelism}"]
    run(workdir, [*args, *var_args(variables)], env, capture=capture, timeout=timeout)


@dataclass(frozen=True)
class Plan:
    """What ``terraform plan -detailed-exitcode`` found: ``clean`` when it proposes no change at all."""

    clean: bool
    output: str = field(repr=False)

    @property
    def changes(self) -> list[str]:
        """The plan's ``# <address> will be ...`` / ``must be ...`` lines (resources, deferred data reads)."""
        return [
            line.strip().removeprefix("# ")
            for line in self.output.splitlines()
            if line.startswith("  # ") and (" will be " in line or " must be " in line)
        ]


def plan(
    workdir: Path,
    env: Mapping[str, str],
    variables: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = 900,
) -> Plan:
    """``terraform plan -detailed-exitcode`` with ``variables`` (the ones the deployment was applied with).

    It changes nothing: no plan file, the refreshed state is not written, and ``-lock=false`` neither takes
    nor waits for the state lock. Exit 0 is a clean :class:`Plan`, exit 2 one with changes; anything else
    raises :class:`TerraformError`.
    """
    args = ["plan", "-detailed-exitcode", "-lock=false", "-input=false", "-no-color", *var_args(variables)]
    result = run(workdir, args, env, timeout=timeout, ok_codes=(0, 2))
    return Plan(clean=result.returncode == 0, output=result.stdout)


def destroy(
    workdir: Path, env: Mapping[str, str], variables: Mapping[str, Any] | None = None, *, capture: bool = True
) -> None:
    """``terraform destroy -auto-approve`` with the same ``variables`` as the apply."""
    run(
        workdir,
        ["destroy", "-auto-approve", "-input=false", "-no-color", *var_args(variables)],
        env,
        capture=capture,
    )


def output_json(workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The module's outputs as ``{name: value}``."""
    result = run(workdir, ["output", "-json", "-no-color"], env)
    raw: dict[str, dict[str, Any]] = json.loads(result.stdout or "{}")
    return {name: item.get("value") for name, item in raw.items()}


def state_resources(workdir: Path, env: Mapping[str, str]) -> list[str]:
    """Addresses of the resources in the state (``terraform state list``)."""
    result = run(workdir, ["state", "list"], env)
    return [line for line in result.stdout.splitlines() if line]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m q4_deploy.terraform`` for shell scripts.

    ``cli-config DIR`` prints ``export TF_CLI_CONFIG_FILE=...`` when a provider mirror exists (nothing
    otherwise); ``copy DIR [ENDPOINT]`` copies the module to DIR and, with ENDPOINT, writes the emulator
    override there.
    """
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(prog="python -m q4_deploy.terraform", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("cli-config", help="write a mirror CLI config, print its export")
    config.add_argument("directory", type=Path)
    copy = commands.add_parser("copy", help="copy infrastructure/ (optionally with an emulator override)")
    copy.add_argument("directory", type=Path)
    copy.add_argument("endpoint", nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.command == "cli-config":
            environ = {k: v for k, v in os.environ.items() if k != "TF_CLI_CONFIG_FILE"}
            env = terraform_env(args.directory, base_env=environ)
            if "TF_CLI_CONFIG_FILE" in env:
                print(f"export TF_CLI_CONFIG_FILE={shlex.quote(env['TF_CLI_CONFIG_FILE'])}")
        else:
            copy_module(args.directory)
            if args.endpoint:
                write_emulator_override(args.directory, args.endpoint)
    except Q4Error as exc:
        print(f"q4_deploy.terraform: error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
