"""Command-line entry points.

``glmtui`` opens the TUI; subcommands run the other deployments. Every heavy
import happens inside the chosen command so ``glmtui --help`` and the TUI's
first paint stay fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__
from .engine.api import MODES


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="model folder, catalogue key or hub id to load at start")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="quantization mode (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checked before anything loads)")
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers",
                        help="what runs a local model: glmtui's own engine, or vLLM's server managed by glmtui "
                             "(vLLM from this interpreter or `python` under [vllm] in config.toml)")


def _add_allow_host(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                        help="also answer requests whose Host header is NAME (repeatable; '*' for any). "
                             "Always answered: localhost, loopback and the bound address")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmtui", description="Run GLM models (ChatGLM3, GLM-4) locally.")
    parser.add_argument("--version", action="version", version=f"glmtui {__version__}")
    _add_model_options(parser)
    parser.add_argument("--api", action="store_true", help="also serve the OpenAI-compatible API beside the TUI")
    parser.add_argument("--api-key", default=None,
                        help="with --api: require this bearer key (default: $GLMTUI_API_KEY)")
    _add_allow_host(parser)
    parser.add_argument("--endpoint", help="drive a remote OpenAI-compatible server instead of a local model")
    sub = parser.add_subparsers(dest="command")

    chat = sub.add_parser("chat", help="line-mode chat for terminals, scripts and pipes")
    _add_model_options(chat)
    chat.add_argument("--endpoint", help="an OpenAI-compatible server to use instead of a local model")
    chat.add_argument("--api-key", default=None, help="bearer key for --endpoint (default: $GLMTUI_API_KEY)")
    chat.add_argument("--system", default="", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.8)
    chat.add_argument("--top-p", type=float, default=0.8)
    chat.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                      help="reasoning models whose template has the switch (enable_thinking): think first, or "
                           "answer at once (default: the template's own)")

    serve = sub.add_parser("serve", help="OpenAI-compatible API server")
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require this bearer key (default: $GLMTUI_API_KEY)")
    _add_allow_host(serve)
    serve.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)

    web = sub.add_parser("web", help="the TUI in a browser (textual-serve)")
    _add_model_options(web)
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument("--endpoint", help="reuse this API server instead of starting one for --model")
    web.add_argument("--api-port", type=int, default=0, help="port of the API server web starts (default: a free one)")
    web.add_argument("--token", default=None,
                     help="access token the browser must give (default: $GLMTUI_WEB_TOKEN, else token under [web] "
                          "in config.toml; required for a --host other machines can reach). Prefer the variable "
                          "or the file: other users can read a command line")

    pull = sub.add_parser("pull", help="download a model")
    pull.add_argument("model")
    pull.add_argument("--source", choices=("hf", "modelscope"), default=None)
    pull.add_argument("--endpoint", default=None, metavar="URL",
                      help="hub or mirror URL (default: HF_ENDPOINT, else [hub] hf_endpoint in config.toml)")

    sub.add_parser("models", help="list the catalogue and what is on disk")

    fit = sub.add_parser("fit", help="memory per mode for a model against this machine's free GPU memory and RAM")
    fit.add_argument("model", help="a model folder, catalogue key or hub id (org/name: only config.json is fetched)")
    fit.add_argument("--context", type=int, default=None, help="tokens of context for the KV cache (default: the "
                     "model's, at most 8,192)")
    fit.add_argument("--json", action="store_true", help="print the figures as JSON")
    fit.add_argument("--source", choices=("hf", "modelscope"), default=None, help="hub for a hub id")
    fit.add_argument("--endpoint", default=None, metavar="URL", help="hub or mirror URL (as for pull)")

    doctor = sub.add_parser("doctor", help="check the driver, torch, quantizers, disk, hubs and history folder")
    _add_model_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    doctor.add_argument("--timeout", type=float, default=60.0, help="seconds for each child that inspects torch")

    history = sub.add_parser("history", help="export or import every conversation (JSON Lines; see README)")
    history.add_argument("action", choices=("export", "import"))
    history.add_argument("file", help="the file to write or read ('-': stdout or stdin)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "device", None) is not None:  # a typo fails here in one line, not inside the load
        from .devices import device_problem, normalize_device

        problem = device_problem(args.device)
        if problem:
            print(f"glmtui: --device: {problem}", file=sys.stderr)
            return 2
        args.device = normalize_device(args.device)
    command = args.command
    if command is None:
        from .ui.app import run_app

        return run_app(args)
    if command == "chat":
        from .linechat import run_line_chat

        return run_line_chat(args)
    if command == "serve":
        from .server import run_server

        return run_server(args)
    if command == "web":
        from .web import run_web

        return run_web(args)
    if command == "pull":
        from .hub import pull_cli
        from .mirrors import remembered_source

        source = args.source or remembered_source()  # else where the Models pane downloads from
        return pull_cli([args.model] + (["--source", source] if source else [])
                        + (["--endpoint", args.endpoint] if args.endpoint else []))
    if command == "doctor":
        from .doctor import run_doctor

        return run_doctor(args)
    if command == "history":
        from .store.history_cli import run_history

        return run_history(args)
    if command == "fit":
        from .fit import fit_command

        return fit_command(args)
    if command == "models":
        from .catalog import print_catalog

        return print_catalog()
    return 2


if __name__ == "__main__":
    sys.exit(main())
