"""``python -m bench [--json]``: the broker's warm path against the bare stack and its own stack.

Exits 0 when the figures were measured (a missed ratio target is a warning), 1 when a server failed
to start, a sanity call failed or a run did not fully succeed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from bench import report
from bench.entry import Failed, measure, progress_printer
from bench.model import BenchConfig
from bench.processes import h2load_binary
from bench.runner import run_bench


def _parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--streams", type=int, default=defaults.streams)
    parser.add_argument("--log-level", default=defaults.log_level, help="of the broker servers")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (server logs) and name it"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = _parser().parse_args(argv)
    config = BenchConfig(
        requests=args.requests,
        rounds=args.rounds,
        connections=args.connections,
        streams=args.streams,
        log_level=args.log_level,
    )

    progress = progress_printer("bench", quiet=args.quiet)
    binary = h2load_binary(install=False)
    if binary is None:
        sys.stderr.write("bench: h2load not found; install nghttp2-client (make bench does)\n")
        return 1
    try:
        result = measure(
            "bench",
            lambda workdir: run_bench(config, binary, workdir, progress),
            progress,
            keep=args.keep,
        )
    except Failed as failed:
        return failed.code
    warnings = report.warnings_for(result)
    sys.stdout.write((report.to_json if args.json else report.to_table)(result, warnings) + "\n")
    if args.json:
        for warning in warnings:
            progress(f"WARNING: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
