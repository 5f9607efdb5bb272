"""`q4 local up|env|down` and `q4 demo`: the whole pipeline on this machine, no Docker, no AWS account."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from q4_local import scratch
from q4_local import state as stack_state

ENV_HINT = 'eval "$(uv run q4 local env)"'


def register(subparsers: Any) -> None:
    local = subparsers.add_parser(
        "local",
        help="run the whole pipeline locally: moto server + the real Terraform + a local runtime",
        description="The local stack: an AWS emulator (moto server) on 127.0.0.1, the real infrastructure/ "
        f"Terraform applied to it, and a local runtime that invokes the orchestrator and runs the tasks. "
        f"State lives in ./.q4/local (or ${stack_state.STATE_DIR_ENV}).",
    )
    local.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"state directory (default: ${stack_state.STATE_DIR_ENV} or ./.q4/local)",
    )
    actions = local.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the local stack (foreground until Ctrl-C, or --detach)")
    up.add_argument(
        "--detach", action="store_true", help="return once the stack is ready and leave it running"
    )
    up.add_argument("--max-tasks", type=int, default=2, help="task processes run at once (default 2)")
    up.add_argument(
        "--task-image", metavar="REF", help="run each task inside this image (scripts/build_image.sh)"
    )
    up.add_argument(
        "--scratch-limit-mib",
        type=_limit_mib,
        metavar="N",
        default=os.environ.get(scratch.LIMIT_ENV),
        help="local-only testing setting: cap every task's scratch dir at N MiB, below Fargate's 21 GiB "
        f"minimum (0: no cap; default ${scratch.LIMIT_ENV}); on a running stack, restarts its runtime",
    )
    up.set_defaults(handler=_up)
    env = actions.add_parser("env", help="print export lines for the AWS CLI, boto3 and scripts")
    env.set_defaults(handler=_env)
    down = actions.add_parser("down", help="stop what `q4 local up` started")
    down.set_defaults(handler=_down)

    demo = subparsers.add_parser(
        "demo",
        help="local stack up, sample data, a full-mode run through the queue, where the report is",
        description="Start the local stack (or reuse it), generate a sample table, submit it through "
        "the work queue, wait for the done message and download the artifacts.",
    )
    demo.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"local stack state directory (default: ${stack_state.STATE_DIR_ENV} or ./.q4/local)",
    )
    demo.add_argument(
        "--to", type=Path, default=Path(".q4") / "demo", help="where to download the run (default: .q4/demo)"
    )
    demo.add_argument("--rows", type=int, default=2000, help="rows of sample data (default 2000)")
    demo.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the run (default 600)"
    )
    demo.set_defaults(handler=_demo)


def _limit_mib(text: str) -> int:
    """A scratch limit: a whole number of MiB, 0 for none."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"the scratch limit {text!r} (--scratch-limit-mib or ${scratch.LIMIT_ENV}) is not a whole number "
            "of MiB; give N >= 1, or 0 for no limit"
        )
    return int(text)


# -- progress on a terminal -------------------------------------------------------------------------------


@contextmanager
def progress_reporter(title: str) -> Iterator[Callable[[str], None]]:
    """A callback showing progress: a live rich status line on a terminal, plain lines otherwise."""
    if not sys.stderr.isatty():
        started_plain = time.monotonic()
        last_count = [0.0]

        def plain(message: str) -> None:
            if message.startswith("terraform apply:"):  # a count: at most one line every 10 s
                if time.monotonic() - last_count[0] < 10:
                    return
                last_count[0] = time.monotonic()
                message += f" ({time.monotonic() - started_plain:.0f} s)"
            print(f"q4: {message}", file=sys.stderr, flush=True)

        yield plain
        return
    from rich.console import Console

    console = Console(stderr=True)
    started = time.monotonic()
    last = [title]
    with console.status(title) as status:
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(1.0):
                status.update(f"{last[0]} [dim]({time.monotonic() - started:.0f} s)[/dim]")

        ticker = threading.Thread(target=refresh, daemon=True)
        ticker.start()

        def update(message: str) -> None:
            if not message.startswith("terraform apply:"):
                console.log(message)
            last[0] = message
            status.update(f"{message} [dim]({time.monotonic() - started:.0f} s)[/dim]")

        try:
            yield update
        finally:
            stop.set()


# -- handlers -----------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from q4_local import stack  # imported here: terraform helpers are only needed by these commands

    directory = stack_state.state_dir(args.state_dir)
    with progress_reporter("starting the local stack") as progress:
        state, started = stack.up(
            directory,
            progress,
            max_tasks=args.max_tasks,
            task_image=args.task_image,
            scratch_limit_mib=args.scratch_limit_mib,
        )
    if not started:
        print(
            f"The local stack is already up at {state.endpoint_url} (state in {directory}).", file=sys.stderr
        )
    else:
        print(f"The local stack is up at {state.endpoint_url} (state in {directory}).", file=sys.stderr)
    print(f"Point the aws CLI and boto3 at it with:  {ENV_HINT}", file=sys.stderr)
    if args.detach or not started:
        if not args.detach:
            print("It was started elsewhere; stop it with `uv run q4 local down`.", file=sys.stderr)
        return 0
    print("Running in the foreground; press Ctrl-C to stop it.", file=sys.stderr)
    try:
        while stack.running_state(directory) is not None:
            time.sleep(1.0)
        print("q4: the local stack stopped (see runtime.log and moto.log in the state dir).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the local stack", file=sys.stderr)
        return 0
    finally:
        stack.down(directory)


def _env(args: argparse.Namespace) -> int:
    from q4_local import stack

    directory = stack_state.state_dir(args.state_dir)
    state = stack.running_state(directory)
    if state is None:
        raise stack.StackError(
            "stack_not_running",
            f"The local stack is not running (no live stack in {directory}); start it with "
            "`uv run q4 local up --detach`.",
        )
    sys.stdout.write(stack.export_lines(state))
    return 0


def _down(args: argparse.Namespace) -> int:
    from q4_local import stack

    directory = stack_state.state_dir(args.state_dir)
    stopped = stack.down(directory)
    if stopped:
        print("Stopped: " + ", ".join(stopped) + ".", file=sys.stderr)
    else:
        print(f"The local stack is not running (nothing recorded in {directory}).", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from q4_local import demo, stack

    directory = stack_state.state_dir(args.state_dir)
    with progress_reporter("q4 demo") as progress:
        state, _ = stack.up(directory, progress)
        report = demo.run_demo(state, args.to, rows=args.rows, timeout=args.timeout, progress=progress)
    print(f"Report: {report}")
    print(
        f"The local stack is still up; explore with `{ENV_HINT}`, stop it with `uv run q4 local down`.",
        file=sys.stderr,
    )
    return 0
