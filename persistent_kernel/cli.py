"""``persistent-kernel``: install the kernelspec, look at checkpoints.

Each subcommand is a function that returns data; ``main`` only parses
flags, calls it and prints. Nothing here starts a kernel or unpickles.

Exit codes: 0 success, 1 an operation failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from jupyter_core.paths import jupyter_data_dir

from . import kernelspec, report
from .errors import CorruptCheckpoint, NoCheckpoint
from .store import Store


def default_root() -> str:
    """The storage root the kernel uses when ``checkpoint_dir`` is not set."""
    return os.path.join(jupyter_data_dir(), "persistent_kernel")


def list_sessions(root: str) -> list[dict[str, Any]]:
    """One record per session that has a readable checkpoint, newest first."""
    rows: list[dict[str, Any]] = []
    for session in Store(root).sessions():
        generations = session.generations()
        try:
            manifest, problems = session.latest()
        except (NoCheckpoint, CorruptCheckpoint):
            continue
        rows.append(
            {
                "session": manifest.session,
                "notebook": manifest.notebook,
                "directory": str(session.path),
                "generations": len(generations),
                "newest": manifest.generation,
                "created": manifest.created,
                "size": manifest.size,
                "disk_usage": session.disk_usage(),
                "variables": sorted(manifest.content.get("variables", {})),
                "skipped": sorted(manifest.content.get("skipped", {})),
                "problems": problems,
            }
        )
    rows.sort(key=lambda r: r["created"], reverse=True)
    return rows


def _print_sessions(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("No checkpoints.")
        return
    for row in rows:
        print(row["session"])
        print(
            f"  {row['generations']} generation(s), newest {row['newest']} at "
            f"{report.when(row['created'])}, {report.human_size(row['size'])} "
            f"({report.human_size(row['disk_usage'])} on disk)"
        )
        print(f"  variables: {report.short_list(row['variables'], 20) or '-'}")
        for problem in row["problems"]:
            print(f"  warning: {problem}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persistent-kernel",
        description="Manage the Python (persistent) Jupyter kernel and its checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    inst = sub.add_parser("install", help="install the kernelspec for this Python")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix")
    where.add_argument("--prefix", help="install into PREFIX/share/jupyter/kernels")
    inst.add_argument("--name", default=kernelspec.KERNEL_NAME, help="kernelspec name")
    inst.add_argument(
        "--display-name", default=kernelspec.DISPLAY_NAME, help="name shown in Jupyter"
    )

    lst = sub.add_parser("list", help="list sessions with checkpoints (nothing is unpickled)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.add_argument(
        "--checkpoint-dir", default=None, help="storage root (default: the kernel's default)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "install":
            path = kernelspec.install(
                user=args.user,
                prefix=args.prefix,
                sys_prefix=args.sys_prefix,
                name=args.name,
                display_name=args.display_name,
            )
            print(f"Installed kernelspec {args.name} in {path}")
        elif args.command == "list":
            rows = list_sessions(args.checkpoint_dir or default_root())
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                _print_sessions(rows)
    except OSError as exc:
        print(f"persistent-kernel: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
