"""Run a task inside its image's filesystem, as the task definition says (``q4 local up --task-image REF``).

No container engine daemon is needed: the image is mounted once through a buildah working container
(:func:`prepare`), and each task runs in its own mount namespace (``unshare --mount``) chrooted into that
root (:func:`task_command`):

- as the image's user (``USER``; 10001:10001 for the Q4 image), or the task definition's ``user``;
- with the root bind-mounted read-only (``readonlyRootFilesystem``);
- with the task's scratch directory mounted at the container path of the scratch volume (``/scratch``),
  owned like the image's own directory there, as a fresh volume is;
- with the task metadata files mounted read-only at ``/run/ecs-metadata``
  (``ECS_CONTAINER_METADATA_URI_V4=file:///run/ecs-metadata``);
- with the image's ``ENV``, then the container's environment and overrides, then the endpoint and
  credentials a task gets from the local stack;
- on the host's network, so the emulator on 127.0.0.1 is reachable.

Not isolated: processes (no PID namespace: ``/proc`` and ``/dev`` are the host's), CPU and memory limits.
The shared root is read-only to every task, so one working container serves them all; :func:`release`
unmounts and removes it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

METADATA_PATH = "/run/ecs-metadata"
CONTAINER_PREFIX = "q4-local-task-"

# Runs on the host in a fresh mount namespace: $1 root, $2 scratch dir, $3 its path in the container,
# $4 metadata dir, $5 user[:group], $6 working dir; the rest is the command. The mounts end with the
# namespace.
_MOUNT_AND_RUN = """
root=$1 scratch=$2 scratch_path=$3 metadata=$4 user=$5 workdir=$6; shift 6
{mount} --make-rprivate /
{mount} --bind "$root" "$root"
{mount} -t tmpfs -o mode=0755,size=1m q4-run "$root/run"
{mkdir} "$root{metadata_path}"
{mount} --bind -o ro "$metadata" "$root{metadata_path}"
{mount} -o remount,bind,ro "$root/run"
{mount} --bind "$scratch" "$root$scratch_path"
{mount} --rbind /dev "$root/dev"
{mount} --rbind /proc "$root/proc"
{mount} -o remount,bind,ro "$root"
cd /
exec {chroot} --userspec="$user" "$root" /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
"""


class ImageTaskError(RuntimeError):
    """The image cannot be used to run tasks here (no buildah, no such image, no mount namespaces)."""


@dataclass(frozen=True)
class TaskImage:
    """An image mounted for tasks: its reference, id, root and configuration."""

    reference: str
    image_id: str  # "sha256:<hex>"
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    user: str = "0"
    workdir: str = "/"
    command: list[str] = field(default_factory=list)  # Entrypoint + Cmd
    container: str = ""  # the buildah working container that holds the mount

    def metadata_container(self, name: str | None) -> dict[str, Any]:
        """The container entry of the task metadata (``/task``'s ``Containers``): Image and ImageID."""
        return {"Name": name, "Image": self.reference, "ImageID": self.image_id}

    def which(self, name: str, path: str | None = None) -> str | None:
        """Where ``name`` is found on ``path`` (default: the image's PATH) inside the image, else None."""
        if "/" in name:
            return name if _exists_in(self.root, name) else None
        for directory in (path or self.env.get("PATH", "/usr/bin:/bin")).split(":"):
            candidate = str(PurePosixPath(directory or "/") / name)
            if _exists_in(self.root, candidate):
                return candidate
        return None


def _exists_in(root: Path, path: str) -> bool:
    return os.path.lexists(root / path.lstrip("/"))


def _buildah(*args: str, timeout: float = 120) -> str:
    binary = shutil.which("buildah")
    if binary is None:
        raise ImageTaskError(
            "buildah is not installed (scripts/build_image.sh installs it and builds the image)"
        )
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ImageTaskError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _image_config(reference: str) -> tuple[str, dict[str, Any]]:
    """The image's id and OCI config (Env, User, WorkingDir, Entrypoint, Cmd)."""
    doc = json.loads(_buildah("inspect", "--type", "image", reference))
    config: dict[str, Any] = doc.get("OCIv1", {}).get("config") or {}
    return f"sha256:{doc['FromImageID']}", config


def prepare(reference: str) -> TaskImage:
    """Mount ``reference`` (a local image) for tasks in a working container of its own: two users of one
    image (two local stacks, a test beside a stack) never unmount each other's root."""
    image_id, config = _image_config(reference)
    name = f"{CONTAINER_PREFIX}{image_id.removeprefix('sha256:')[:12]}-{uuid.uuid4().hex[:8]}"
    _buildah("from", "--pull-never", "--name", name, reference)
    root = Path(_buildah("mount", name))
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    return TaskImage(
        reference=reference,
        image_id=image_id,
        root=root,
        env=env,
        user=str(config.get("User") or "0"),
        workdir=str(config.get("WorkingDir") or "/"),
        command=[*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
        container=name,
    )


def release(image: TaskImage) -> None:
    """Unmount and remove the working container :func:`prepare` made (tasks still running lose nothing:
    their namespaces hold their own mounts)."""
    for args in (("umount", image.container), ("rm", image.container)):
        with contextlib.suppress(ImageTaskError):
            _buildah(*args)


def _owner(root: Path, path: str) -> tuple[int, int]:
    stat = (root / path.lstrip("/")).stat()
    return stat.st_uid, stat.st_gid


def _home(root: Path, user: str) -> str:
    """HOME as a container engine sets it: the user's passwd entry in the image, else /."""
    name = user.split(":", 1)[0]
    passwd = root / "etc" / "passwd"
    if passwd.is_file():
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and name in (fields[0], fields[2]):
                return fields[5] or "/"
    return "/"


def task_command(
    image: TaskImage,
    command: Sequence[str],
    environment: Mapping[str, str],
    scratch: Path,
    metadata_dir: Path,
    *,
    scratch_path: str = "/scratch",
    user: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and env that run ``command`` inside ``image`` (see the module docstring).

    ``environment``: the container's environment as the task definition and overrides give it (paths as
    inside the container), plus the endpoint and credentials of the local stack and ``Q4_TASK_ARN``.
    ``scratch`` (a host directory) is chowned to the owner of ``scratch_path`` in the image.
    """
    tools = {name: shutil.which(name) for name in ("unshare", "mount", "mkdir", "chroot", "sh")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise ImageTaskError(f"cannot run tasks in the image: {', '.join(missing)} not found on this host")
    if not (image.root / scratch_path.lstrip("/")).is_dir():
        raise ImageTaskError(
            f"the image {image.reference} has no {scratch_path} directory to mount scratch on"
        )
    user = user or image.user
    os.chown(scratch, *_owner(image.root, scratch_path))
    script = "; ".join(line for line in _MOUNT_AND_RUN.strip().splitlines()).format(
        mount=shlex.quote(str(tools["mount"])),
        mkdir=shlex.quote(str(tools["mkdir"])),
        chroot=shlex.quote(str(tools["chroot"])),
        metadata_path=METADATA_PATH,
    )
    argv = [
        str(tools["unshare"]), "--mount", "--fork", "--", str(tools["sh"]), "-ec", script, "q4-image-task",
        str(image.root), str(scratch), scratch_path, str(metadata_dir), user, image.workdir, *command,
    ]  # fmt: skip
    env = {
        **image.env,
        "HOME": _home(image.root, user),
        **environment,
        "ECS_CONTAINER_METADATA_URI_V4": f"file://{METADATA_PATH}",
    }
    return argv, env


def launch(
    image: TaskImage,
    task_dir: Path,
    command: Sequence[str],
    environment: Mapping[str, str],
    metadata: Mapping[str, Any],
    *,
    container_name: str | None = None,
    scratch_path: str = "/scratch",
    user: str | None = None,
) -> tuple[list[str], dict[str, str], Path]:
    """A local runtime's launch of one task inside ``image``: ``(argv, env, cwd)``.

    ``task_dir`` gets ``scratch/`` (mounted at ``scratch_path``) and ``metadata/task``: ``metadata`` (the
    task metadata document) with ``Containers`` naming this image (Image: the reference given, ImageID: its
    id). ``command``: entry point + command of the task definition (the image's when empty).
    ``environment``: the container's environment and overrides, the endpoint, credentials and
    ``Q4_TASK_ARN``, with paths as inside the container.
    """
    scratch, metadata_dir = task_dir / "scratch", task_dir / "metadata"
    scratch.mkdir(parents=True, exist_ok=True)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    document = {**metadata, "Containers": [image.metadata_container(container_name)]}
    (metadata_dir / "task").write_text(json.dumps(document, default=str))
    argv, env = task_command(
        image, list(command) or image.command, environment, scratch, metadata_dir, scratch_path=scratch_path,
        user=user,
    )  # fmt: skip
    return argv, env, scratch


def image_launcher(image: TaskImage) -> Callable[[Any, Any, Path, dict[str, str]], Any]:
    """A ``q4_local.fargate.TaskLauncher`` that runs every task inside ``image``: give it to
    ``LocalRuntime(config, launcher=...)`` (``q4 local up --task-image REF``).

    ``q4_local.fargate`` (the runtime's Fargate stand-in and its ``Launch``) is imported when this is
    called, so this module stays importable without it.
    """
    fargate = importlib.import_module("q4_local.fargate")

    def launch_in_image(record: Any, container: Any, task_dir: Path, aws_env: dict[str, str]) -> Any:
        definition: dict[str, Any] = container.container
        mounts = definition.get("mountPoints") or [{"containerPath": "/scratch"}]
        argv, env, cwd = launch(
            image,
            task_dir,
            container.command,
            {**container.environment, **aws_env, "Q4_TASK_ARN": record.task_arn},
            fargate.task_metadata(container),
            container_name=definition.get("name"),
            scratch_path=mounts[0]["containerPath"],
            user=definition.get("user") or None,
        )
        return fargate.Launch(argv=argv, env=env, cwd=cwd)

    return launch_in_image
