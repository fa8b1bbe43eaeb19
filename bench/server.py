"""The server under test: the real app under uvicorn, one process, as ``ccd serve`` runs it.

    python -m bench.server --data-dir DIR --port PORT [--teacher] [--http h11|httptools]

It differs from ``ccd serve`` only where a benchmark needs it: the BLAS thread count is a flag
(default 1, as ``ccd serve``; torch's too with ``--teacher``, the only case that imports torch),
uvicorn's HTTP parser and event loop may be chosen (``auto``, ``ccd serve``'s choice, takes
httptools / uvloop when installed), and with
``--teacher`` the model holder builds ``bench.teacher.TeacherServingModel`` from each snapshot
instead of the student's ``ServingModel``; everything else (routes, seen-items exclusion,
serialisation, metrics middleware) is the production path.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--teacher", action="store_true", help="serve the teacher ensemble")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    parser.add_argument("--threads", type=int, default=1, help="BLAS (and teacher torch) threads")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--reload-poll-s", type=float, default=5.0)
    args = parser.parse_args(argv)

    import uvicorn

    from contracts.settings import Settings
    from service.app import create_app
    from service.ranking import limit_blas_threads

    limit_blas_threads(args.threads)
    if args.teacher:
        import torch

        from bench.teacher import install_teacher_serving

        torch.set_num_threads(args.threads)
        install_teacher_serving()
    settings = Settings(
        data_dir=args.data_dir.resolve(),
        host=args.host,
        port=args.port,
        log_level=args.log_level.upper(),
        reload_poll_s=args.reload_poll_s,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        http=args.http,
        loop=args.loop,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
