"""The README's worker runs as written against a real broker and emulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from broker_harness import BrokerHarness

_README = Path(__file__).parent.parent / "README.md"


def _first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", _README.read_text(encoding="utf-8"), re.DOTALL)
    assert match is not None, "the README has no python block"
    return match.group(1)


class TestReadme:
    def test_worker_example(self, harness: BrokerHarness) -> None:
        """The worker prints True after its call, including after a revoked task's 401."""
        code = _first_python_block()
        assert len(code.strip().splitlines()) < 20
        env = os.environ | {"BROKER_ADDRESS": harness.address, "CONTROLPLANE_URL": harness.base_url}

        first = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        task_id = harness.tasks()[-1].task_id
        harness.revoke_task(task_id)
        second = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )

        assert (first.returncode, first.stdout) == (0, "True\n"), first.stderr
        assert (second.returncode, second.stdout) == (0, "True\n"), second.stderr
        assert harness.rpc_count("ReportRejection") == 1
