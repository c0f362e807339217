"""``riverstream console``: the console app (`console.app`) under uvicorn, in its own process.

One worker is enough (a page holds one event stream; the work per update is a few Redis reads).
Open pages keep their event streams open: on SIGTERM or Ctrl-C the server gives them
`SHUTDOWN_SECONDS` to go, then closes them.
"""

from __future__ import annotations

import uvicorn

from console.app import create_console
from schemas.settings import Settings

SHUTDOWN_SECONDS = 2


def run(settings: Settings, host: str, port: int) -> None:
    """Serve the console on ``host:port`` until stopped."""
    config = uvicorn.Config(
        create_console(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    uvicorn.Server(config).run()
