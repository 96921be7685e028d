"""``python -m bench.cold_fleet``: 500 concurrent cold callers over 3 broker replicas on one Redis.

Starts a private Redis, the control-plane emulator (its own process) and ``--replicas`` real
``credential-broker serve --workers 1`` processes (replicas, as on separate nodes). With every cache
cold (a fresh Redis: no identity, no task, no assertion), it opens ``--connections`` connections,
spread round robin over the replicas, and starts ``--callers`` background-task GetAuthorization
calls at once. It measures the time until the last caller has its answer (and the median), and the
Redis commands the cold start caused per call.

The fleet must register the identity once and the background task once at the control plane (the
emulator counts), and every caller must get an assertion for that one runtime and task; otherwise
the run fails (exit 1), as it does when a process fails or a call does. Everything it starts is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import grpc

from bench.entry import Failed, measure, progress_printer
from bench.model import EXCLUDED_REDIS_COMMANDS
from bench.processes import BenchError, RedisProcess
from bench.workers import BrokerFiles, BrokerProcess, EmulatorProcess
from broker._proto.credential_broker.v1 import broker_pb2 as pb
from broker._proto.credential_broker.v1 import broker_pb2_grpc as pb_grpc

_CALL_TIMEOUT_S: Final = 60.0

Progress = Callable[[str], None]


async def _cold_calls(
    addresses: list[str], callers: int, connections: int
) -> tuple[list[float], list[pb.Authorization], Counter[str]]:
    """Fire ``callers`` calls at once over ``connections`` connections (round robin over the
    replicas); each caller's seconds to its answer, the answers, and the errors by status."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(addresses[n % len(addresses)], options=options)
        for n in range(connections)
    ]
    stubs = [pb_grpc.CredentialBrokerStub(channel) for channel in channels]
    for channel in channels:  # connect first: the clock measures the broker, not TCP set-up
        await asyncio.wait_for(channel.channel_ready(), _CALL_TIMEOUT_S)
    seconds: list[float] = []
    answers: list[pb.Authorization] = []
    errors: Counter[str] = Counter()

    async def call(n: int, started: float) -> None:
        try:
            reply = await stubs[n % connections].GetAuthorization(
                pb.GetAuthorizationRequest(), timeout=_CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            errors[f"{exc.code().name}: {exc.details()}"] += 1
            return
        seconds.append(time.perf_counter() - started)
        answers.append(reply.authorization)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(call(n, started) for n in range(callers)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return seconds, answers, errors


def _redis_commands(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {k: v for k, v in sorted(delta.items()) if v and k not in EXCLUDED_REDIS_COMMANDS}


def run_cold_fleet(
    replicas: int, callers: int, connections: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    """Start everything, run the cold calls once, check the registrations; the figures.

    Raises:
        BenchError: a process failed, a call failed, or the fleet registered more than once.
    """
    with contextlib.ExitStack() as cleanup:
        redis = RedisProcess(workdir)
        cleanup.callback(redis.stop)
        redis.start()
        emulator = EmulatorProcess(workdir)
        cleanup.callback(emulator.stop)
        emulator.start()
        files = BrokerFiles.create(workdir, redis.url, emulator.base_url)
        fleet = [BrokerProcess(f"replica {n}", 1, files, workdir) for n in range(replicas)]
        for broker in fleet:
            cleanup.callback(broker.stop)
            broker.start()
            progress(f"{broker.name} on {broker.address}")
        redis_before = redis.command_calls()
        seconds, answers, errors = asyncio.run(
            _cold_calls([b.address for b in fleet], callers, connections)
        )
        commands = _redis_commands(redis.command_calls(), redis_before)
        stats = emulator.stats()
        registered = sum(len(b.events("identity.registered")) for b in fleet)
        tasks_registered = sum(len(b.events("task.registered")) for b in fleet)
    problems = []
    if errors:
        problems.append(f"{sum(errors.values())} callers failed: {dict(errors)}")
    if stats["identity_registrations"] != 1 or registered != 1:
        problems.append(
            f"the identity was registered {stats['identity_registrations']} times (the brokers "
            f"logged {registered} identity.registered); expected once for the fleet"
        )
    if stats["task_registrations"] != 1 or tasks_registered != 1:
        problems.append(
            f"{stats['task_registrations']} task registrations (the brokers logged "
            f"{tasks_registered} task.registered); expected the background task once"
        )
    runtimes = {a.agent_runtime_id for a in answers}
    tasks = {a.task_id for a in answers}
    schemes = {pb.Scheme.Name(a.scheme) for a in answers}
    if len(runtimes) > 1 or len(tasks) > 1 or schemes != {"SCHEME_AGENT_ASSERTION"}:
        problems.append(f"answers differ: {len(runtimes)} runtimes, {len(tasks)} tasks, {schemes}")
    if problems:
        raise BenchError("; ".join(problems))
    seconds.sort()
    return {
        "replicas": replicas,
        "callers": callers,
        "connections": connections,
        "cpus": os.cpu_count(),
        "answered": len(answers),
        "time_to_last_answer_s": round(seconds[-1], 4),
        "median_answer_s": round(statistics.median(seconds), 4),
        "first_answer_s": round(seconds[0], 4),
        "identity_registrations": stats["identity_registrations"],
        "task_registrations": stats["task_registrations"],
        "authenticate_requests": stats["requests_by_endpoint"].get("authenticate", 0),
        "redis_commands": sum(commands.values()),
        "redis_commands_per_call": round(sum(commands.values()) / callers, 3),
        "redis_commands_by_name": commands,
    }


def _table(result: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"{result['callers']} cold callers over {result['replicas']} replicas "
            f"({result['connections']} connections), one Redis, {result['cpus']} CPUs",
            f"time to the last answer  {result['time_to_last_answer_s'] * 1000:8.1f} ms",
            f"median answer            {result['median_answer_s'] * 1000:8.1f} ms",
            f"first answer             {result['first_answer_s'] * 1000:8.1f} ms",
            f"registrations            identity {result['identity_registrations']}, "
            f"task {result['task_registrations']}",
            f"Redis commands per call  {result['redis_commands_per_call']:8.2f} "
            f"({result['redis_commands']} in all: "
            + ", ".join(f"{k} {v}" for k, v in result["redis_commands_by_name"].items())
            + ")",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the cold start once and print what it measured."""
    parser = argparse.ArgumentParser(prog="python -m bench.cold_fleet", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--callers", type=int, default=500)
    parser.add_argument("--connections", type=int, default=30, help="spread over the replicas")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    progress = progress_printer("bench.cold_fleet", quiet=args.quiet)
    try:
        result = measure(
            "bench.cold_fleet",
            lambda workdir: run_cold_fleet(
                args.replicas, args.callers, args.connections, workdir, progress
            ),
            progress,
        )
    except Failed as failed:
        return failed.code
    sys.stdout.write((json.dumps(result, indent=2) if args.json else _table(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
