"""What keeps the web UI private: a rate-limited login, loopback-only serving unless a login is
set, and uploads that live in a private folder for as long as one request needs them.
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import ipaddress
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from priorcase.errors import PriorcaseError

MAX_FAILURES = 5  # wrong passwords per user name within FAILURE_WINDOW_S ...
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 300.0  # ... lock that name (right password refused too) for this long
MAX_GLOBAL_FAILURES = 20  # wrong logins of any names within the window lock every name
FAILURE_DELAY_S = 0.5  # each wrong login waits this long (without blocking the server)


def parse_auth(auth: str) -> tuple[str, str]:
    """``user:pass`` -> (user, pass); the password may contain colons."""
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise PriorcaseError("--auth must look like user:password")
    return user, password


class LoginLimiter:
    """Counts failed logins per user name (and in all) and says who is locked out.

    Gradio hands its login check only the name and password (no client address), so the
    limit is per name plus a global one: a guesser cycling names is stopped by the latter.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._locked_until: dict[str | None, float] = {}  # None: every name
        self._lock = threading.Lock()

    def locked(self, user: str) -> bool:
        now = self.clock()
        with self._lock:
            return any(self._locked_until.get(k, 0.0) > now for k in (user, None))

    def failed(self, user: str) -> None:
        now = self.clock()
        with self._lock:
            for times, key, limit in (
                (self._failures.setdefault(user, deque()), user, MAX_FAILURES),
                (self._all, None, MAX_GLOBAL_FAILURES),
            ):
                times.append(now)
                while times and times[0] <= now - FAILURE_WINDOW_S:
                    times.popleft()
                if len(times) >= limit:
                    self._locked_until[key] = now + LOCKOUT_S
                    times.clear()

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(user, None)


def rate_limited_login(
    user: str, password: str, limiter: LoginLimiter | None = None
) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio ``auth=`` check for one account: constant-time compare, lockout after
    ``MAX_FAILURES`` wrong passwords a minute, and a short non-blocking delay per failure."""
    limiter = limiter or LoginLimiter()

    async def check(username: str, given: str) -> bool:
        name = username.strip()
        if limiter.locked(name):
            await asyncio.sleep(FAILURE_DELAY_S)
            return False
        ok = hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(
            given.encode(), password.encode()
        )
        if ok:
            limiter.succeeded(name)
            return True
        limiter.failed(name)
        await asyncio.sleep(FAILURE_DELAY_S)
        return False

    check.limiter = limiter  # type: ignore[attr-defined]
    return check


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: str | None, insecure_no_auth: bool) -> None:
    """Serving beyond this machine needs a login, or an explicit ``--insecure-no-auth``."""
    if not is_loopback(host) and not auth and not insecure_no_auth:
        raise PriorcaseError(
            f"serving on {host} would let anyone on the network search the library: "
            "add --auth user:password (or --insecure-no-auth on a trusted network)"
        )


def private_upload_dir() -> Path:
    """A fresh folder (mode 0700) for Gradio's uploads and cache, removed at exit.

    Set before the app's components are built: Gradio reads ``GRADIO_TEMP_DIR`` then, and
    serves ``/gradio_api/file=`` only from its own folder, so a user of another Gradio
    server on this machine (sharing the default ``/tmp/gradio``) cannot fetch our uploads.
    """
    path = Path(tempfile.mkdtemp(prefix="priorcase-ui-"))
    os.chmod(path, 0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def shared_gradio_dirs() -> list[str]:
    """Folders other Gradio servers write to, which this one must never serve from."""
    return [str(Path(tempfile.gettempdir()).resolve() / "gradio")]


def discard_upload(path: str | Path) -> None:
    """Delete an uploaded file (and its per-upload folder) once it has been decoded."""
    path = Path(path)
    root = os.environ.get("GRADIO_TEMP_DIR")
    path.unlink(missing_ok=True)
    parent = path.parent
    if root and parent != Path(root) and parent.is_relative_to(root):
        shutil.rmtree(parent, ignore_errors=True)
