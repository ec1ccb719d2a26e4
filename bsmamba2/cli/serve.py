"""``bsmamba2 serve``: the local web app (``bsmamba2.web``) over the models it is given.

Each ``--checkpoint`` and ``--model`` is an entry of the page's model picker (with none:
``$BSMAMBA2_CHECKPOINT`` and every known checkpoint); the first loads at start, the others
when a job first asks for them, and at most ``--max-models`` stay loaded. The port is bound
before any model loads, so a port in use is a one-line error at once; the address is printed
when the page is ready. Ctrl+C stops the server and deletes every job's files.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys

from bsmamba2.cli.options import add_separator_options, load_separator
from bsmamba2.errors import BSMamba2Error, require_extra

LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BSMamba2Error(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "; choose another --port" if exc.errno in (98, 48, 10048) else ""
        raise BSMamba2Error(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def _log_to_stderr() -> None:
    logger = logging.getLogger("bsmamba2.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s bsmamba2 serve: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    require_extra("bsmamba2 serve", "web")
    import torch
    import uvicorn

    from bsmamba2.checkpoint.registry import resolve
    from bsmamba2.device import resolve_device
    from bsmamba2.web.app import LOCAL_HOSTS, create_app
    from bsmamba2.web.jobs import JobQueue, Limits
    from bsmamba2.web.models import ModelShelf, model_choices

    for flag, value in [
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-minutes", args.max_minutes),
        ("--keep-minutes", args.keep_minutes),
        ("--max-files", args.max_files),
        ("--jobs", args.jobs),
        ("--max-models", args.max_models),
    ]:
        if not value > 0:
            raise BSMamba2Error(f"{flag} must be positive, got {value}")
    local = is_loopback(args.host)
    if not local:
        print(
            f"bsmamba2 serve: warning: listening on {args.host}: anyone who can reach this machine "
            "can upload files and use its CPU/GPU; there are no accounts",
            file=sys.stderr,
        )
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    if args.jobs > 1 and args.compile != "no":  # one compile shared by parallel jobs would race
        args.compile = "no"
    choices = model_choices(args.checkpoint or [], args.model or [])

    def load(choice):
        separator = load_separator(args, progress=False, model=resolve(choice.weights))
        # The page's TTA box: the same model (shared) with the other setting; one compile at most.
        twin = load_separator(args, progress=False, model=separator.model, tta=not args.tta, compile=False)
        separator.name = twin.name = choice.name
        return {separator.tta: separator, twin.tta: twin}

    device = resolve_device(args.device)
    models = ModelShelf(choices, load, device, args.tta, args.max_models)
    models.separator(models.default)  # the default loads now: a bad checkpoint is an error at once
    if device.type == "cpu" and args.jobs > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // args.jobs))  # not oversubscribed
    limits = Limits(
        max_bytes=int(args.max_upload_mb * 2**20),
        max_seconds=args.max_minutes * 60,
        max_files=args.max_files,
        keep_seconds=args.keep_minutes * 60,
    )
    jobs = JobQueue(models, limits, workers=args.jobs, root=args.workdir)
    try:  # from here on, any way out deletes the jobs' folders
        _log_to_stderr()
        app = create_app(jobs, allowed_hosts=LOCAL_HOSTS if local else None)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        shown = f"[{args.host}]" if ":" in args.host else args.host
        offered = f"model {choices[0].name}" if len(choices) == 1 else f"models {', '.join(models.choices)}"
        print(
            f"bsmamba2 serve: http://{shown}:{port}/ ({offered} on {device}, "
            f"{args.jobs} job(s) at a time); Ctrl+C stops it and deletes every job's files",
            flush=True,
        )
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then raises the Ctrl+C again
        pass
    finally:
        jobs.close()  # also done by the app's shutdown; here for a Ctrl+C before uvicorn took over
    print("bsmamba2 serve: stopped; every job's files are deleted", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    p = subparsers.add_parser(
        "serve",
        help=summary,
        description="Start a local web page for separating files: choose or drop audio files, pick a "
        "model, follow each file's progress, play and download the stems. The page offers every "
        "--checkpoint and --model given (with none: $BSMAMBA2_CHECKPOINT and every known checkpoint); "
        "each loads when first used. Listens on 127.0.0.1 (this machine only) unless --host says "
        "otherwise. Needs the web extra: pip install 'bsmamba2[web]'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s; 0: any free one)")
    add_separator_options(p, many_models=True)
    p.add_argument(
        "--max-models",
        type=int,
        default=2,
        metavar="N",
        help="models kept loaded at once; loading one more drops the least recently used "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="jobs separated at once on the CPU, the threads shared between them (always 1 on a GPU; "
        "more than 1 turns --compile off) (default: %(default)s)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=500, help="largest file accepted, MB (default: %(default)s)"
    )
    p.add_argument(
        "--max-minutes", type=float, default=30, help="longest audio accepted per file (default: %(default)s)"
    )
    p.add_argument("--max-files", type=int, default=20, help="files per job (default: %(default)s)")
    p.add_argument(
        "--keep-minutes",
        type=float,
        default=60,
        help="results are deleted this long after their job finished, or once their zip is downloaded "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--workdir", metavar="DIR", help="where the per-job temporary folders go (default: the system's)"
    )
    p.set_defaults(func=run)
