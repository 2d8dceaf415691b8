"""Progress lines through the ``logging`` module: every module logs to a child of the
``semirobust_ray`` logger, and whoever runs the package decides what is shown.

The command line calls :func:`configure` (``--quiet``: warnings only, ``--verbose``: debug
lines); a Ray worker calls it with the driver's level, and Tune prefixes its lines with the
trial, as it does any output of a worker. A library user who has configured ``logging`` keeps
their configuration; one who has not sees the progress lines (:func:`ensure_visible`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LOGGER = "semirobust_ray"

_HANDLER_NAME = "semirobust_ray.console"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a line is logged, not when it was configured:
    a notebook cell, pytest's capture or Ray's worker redirection may have replaced it since."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: int = logging.INFO) -> None:
    """Show the package's lines at ``level`` and above on stdout, one message a line (each
    says where it comes from: ``[baseline]``, ``[search]``, ``[fb 3 t1]``)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = _StdoutHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)


def ensure_visible() -> None:
    """:func:`configure` at INFO unless logging is configured already (a handler on the root
    or on the package's logger): the Python API shows its progress in a bare notebook."""
    if not logging.getLogger().handlers and not logging.getLogger(LOGGER).handlers:
        configure()


def level() -> int:
    """The package's effective level, handed to Ray workers so they show what the driver does."""
    return logging.getLogger(LOGGER).getEffectiveLevel()
