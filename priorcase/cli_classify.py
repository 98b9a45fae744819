"""``priorcase classify`` and ``priorcase eval`` (wired to priorcase.classifiers / evaluation)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_classify_commands(sub, with_db: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register classify/eval sub-commands (filled in by the classifiers work)."""
