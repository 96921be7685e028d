"""``python -m bench [--json]``: broker vs. echo throughput, latency and warm-path proof.

Exits 0 when the figures were measured (a missed ratio target is a warning), 1 when a server failed
to start, a sanity call failed or a run did not fully succeed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench import report
from bench.model import BenchConfig
from bench.processes import BenchError, h2load_binary
from bench.runner import run_bench


def _parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--embedded-requests", type=int, default=defaults.embedded_requests)
    parser.add_argument("--embedded-rounds", type=int, default=defaults.embedded_rounds)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--streams", type=int, default=defaults.streams)
    parser.add_argument("--log-level", default=defaults.log_level, help="of both servers")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (server logs) and name it"
    )
    return parser


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = _parser().parse_args(argv)
    config = BenchConfig(
        requests=args.requests,
        rounds=args.rounds,
        embedded_requests=args.embedded_requests,
        embedded_rounds=args.embedded_rounds,
        connections=args.connections,
        streams=args.streams,
        log_level=args.log_level,
    )

    def progress(line: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"[bench] {line}\n")
            sys.stderr.flush()

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    binary = h2load_binary(install=False)
    if binary is None:
        sys.stderr.write("bench: h2load not found; install nghttp2-client (make bench does)\n")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="credential-broker-bench-"))
    try:
        result = run_bench(config, binary, workdir, progress)
    except BenchError as exc:
        sys.stderr.write(f"bench: FAILED: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted; every process it started was stopped\n")
        return 130
    finally:
        if args.keep:
            progress(f"working directory kept (server logs): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    warnings = report.warnings_for(result)
    sys.stdout.write((report.to_json if args.json else report.to_table)(result, warnings) + "\n")
    if args.json:
        for warning in warnings:
            progress(f"WARNING: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
