"""Waiting for another replica: one polling loop with one backoff, on the injected clock.

A replica that finds a fleet-wide lock held (a registration, a login refresh, a task replacement),
or that waits for another replica's result, looks again until it has what it waits for or its
deadline passes. Every such wait is :func:`poll_until`:

* the first pause is about ``FIRST_PAUSE`` seconds, and each next one is ``GROWTH`` times longer, up
  to ``MAX_PAUSE``: a lock released at once is taken within milliseconds, and a long wait costs the
  store at most a few reads per second per waiter;
* each pause is drawn between half and all of that value (jitter), so the waiters on one lock do not
  look in lockstep;
* the last pause ends at the deadline, where one last look is made before giving up.

The deadline and the pauses both run on the injected :class:`Clock`, so a test's manual clock
drives the whole wait and it takes no real time.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from broker.core.credentials.ports import Clock

T = TypeVar("T")

FIRST_PAUSE = 0.02
GROWTH = 1.5
MAX_PAUSE = 0.25


async def poll_until(
    clock: Clock,
    attempt: Callable[[], Awaitable[T | None]],
    *,
    deadline: float,
) -> T | None:
    """Call ``attempt`` until it returns something other than ``None``, for ``deadline`` seconds.

    Args:
        clock: the deadline and the pauses between attempts.
        attempt: one look (e.g. try the lock, read the result); ``None`` means "not yet".
        deadline: seconds from now after which the wait gives up; the first attempt is always made.

    Returns:
        The first value ``attempt`` returned, or ``None`` when the deadline passed without one.
    """
    give_up_at = clock.monotonic() + deadline
    ceiling = FIRST_PAUSE
    while (outcome := await attempt()) is None:
        remaining = give_up_at - clock.monotonic()
        if remaining <= 0:
            return None
        pause = ceiling * (0.5 + random.random() / 2)  # noqa: S311 (jitter, not crypto)
        await clock.sleep(min(pause, remaining))
        ceiling = min(ceiling * GROWTH, MAX_PAUSE)
    return outcome
