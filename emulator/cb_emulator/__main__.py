"""``python -m cb_emulator`` is ``credential-broker-emulator``."""

from __future__ import annotations

from cb_emulator.cli import main

raise SystemExit(main())
