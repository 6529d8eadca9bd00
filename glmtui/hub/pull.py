"""``glmtui pull``: one download in the terminal, with a Rich progress bar and a one-line outcome."""

from __future__ import annotations

import threading
from typing import Optional

from ..mirrors import other_source_hint
from .downloader import Downloader
from .endpoints import HUB_TABLE
from .errors import DownloadCancelled, DownloadError
from .progress import DownloadProgress
from .sources import SOURCES


def pull_cli(argv: Optional[list[str]] = None) -> int:
    """``glmtui pull MODEL [--source hf|modelscope]``: download with a progress bar. Returns the exit code."""
    import argparse

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    parser = argparse.ArgumentParser(prog="glmtui pull", description="Download a model for glmtui.")
    parser.add_argument("model", help="catalogue key (e.g. chatglm3-6b) or hub id (org/name)")
    parser.add_argument("--source", choices=SOURCES, default="hf", help="hub to download from (default: hf)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: the main branch)")
    parser.add_argument("--models-dir", default=None, help="where models are kept (default: glmtui's data dir)")
    parser.add_argument("--token", default=None, help="hub token (default: HF_TOKEN / MODELSCOPE_API_TOKEN)")
    parser.add_argument("--endpoint", default=None, metavar="URL",
                        help="hub or mirror URL (default: HF_ENDPOINT / MODELSCOPE_ENDPOINT, "
                             f"else hf_endpoint / modelscope_endpoint under [{HUB_TABLE}] in config.toml)")
    args = parser.parse_args(argv)

    console = Console(stderr=True)

    def say(label: str, text: str) -> None:
        # one line however long (soft_wrap), and the message printed as is, not as markup
        console.print(label, escape(text), soft_wrap=True)

    endpoint = {"hf_endpoint" if args.source == "hf" else "modelscope_endpoint": args.endpoint}
    downloader = Downloader(args.models_dir, token=args.token, **endpoint)
    try:
        _entry, repo, dest = downloader.target(args.model, args.source)
    except DownloadError as e:
        say("[red]error:[/red]", str(e))
        return 2
    cancel = threading.Event()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[files]}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{repo}: listing", total=None, files="")

        def on_progress(p: DownloadProgress) -> None:
            what = p.current_file or ("done" if p.phase == "done" else p.phase)
            bar.update(task, total=p.bytes_total or None, completed=p.bytes_done,
                       description=f"{repo}: {what}", files=f"{p.files_done}/{p.files_total} files")

        try:
            path = downloader.download(_entry, dest, source=args.source, revision=args.revision,
                                       on_progress=on_progress, cancel=cancel)
            failure = None
        except KeyboardInterrupt:
            cancel.set()
            failure = ("[yellow]cancelled:[/yellow]", "what was downloaded is kept; run the same command to resume",
                       130)
        except DownloadCancelled:
            failure = ("[yellow]cancelled:[/yellow]", "run the same command to resume", 130)
        except DownloadError as e:  # a mirror or the other hub may work where this one did not
            failure = ("[red]error:[/red]", str(e) + other_source_hint(_entry, args.source, e), 1)
        except Exception as e:  # noqa: BLE001 - a bug: one line, not a traceback
            failure = ("[red]error:[/red]", f"unexpected {type(e).__name__}: {e} (a glmtui bug: please report it)", 1)
    if failure is not None:
        say(failure[0], failure[1])
        return failure[2]
    say("[green]ready:[/green]", str(path))
    # its exact memory count for `glmtui fit` and the Models pane, detached and at low priority: pull returns now
    from ..engine.exact_cache import count_in_background

    count_in_background(path)
    return 0
