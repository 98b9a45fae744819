"""Serving rules and the login limiter, without a browser."""

from __future__ import annotations

import asyncio

import pytest

from priorcase.cli import main
from priorcase.ui.security import (
    FAILURE_WINDOW_S,
    LOCKOUT_S,
    MAX_FAILURES,
    MAX_GLOBAL_FAILURES,
    LoginLimiter,
    check_exposure,
    rate_limited_login,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_delay(monkeypatch):
    monkeypatch.setattr("priorcase.ui.security.FAILURE_DELAY_S", 0.0)


def attempts(check, tries: list[tuple[str, str]]) -> list[bool]:
    return [asyncio.run(check(user, pw)) for user, pw in tries]


def test_lockout_after_failures_then_release() -> None:
    clock = Clock()
    check = rate_limited_login("doc", "right", LoginLimiter(clock))
    assert attempts(check, [("doc", "right")]) == [True]
    assert attempts(check, [("doc", "wrong")] * MAX_FAILURES) == [False] * MAX_FAILURES
    assert attempts(check, [("doc", "right")]) == [False]  # locked: even the right password
    clock.now += LOCKOUT_S - 1
    assert attempts(check, [("doc", "right")]) == [False]
    clock.now += 2
    assert attempts(check, [("doc", "right")]) == [True]


def test_failures_spread_over_time_do_not_lock() -> None:
    clock = Clock()
    check = rate_limited_login("doc", "right", LoginLimiter(clock))
    for _ in range(3 * MAX_FAILURES):
        assert attempts(check, [("doc", "wrong")]) == [False]
        clock.now += FAILURE_WINDOW_S / (MAX_FAILURES - 1) + 0.1
    assert attempts(check, [("doc", "right")]) == [True]


def test_cycling_user_names_hits_the_global_limit() -> None:
    clock = Clock()
    check = rate_limited_login("doc", "right", LoginLimiter(clock))
    names = [(f"guess{i}", "x") for i in range(MAX_GLOBAL_FAILURES)]
    assert not any(attempts(check, names))
    assert attempts(check, [("doc", "right")]) == [False]


def test_auth_check_is_a_coroutine_function_gradio_awaits() -> None:
    import inspect

    # gradio calls a plain callable without awaiting: a coroutine object would be truthy
    assert inspect.iscoroutinefunction(rate_limited_login("a", "b"))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_serving_beyond_loopback_needs_auth(host: str, capsys, tmp_path) -> None:
    assert main(["serve", "--db", str(tmp_path / "db"), "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--auth" in err and "--insecure-no-auth" in err
    check_exposure(host, "u:p", False)
    check_exposure(host, None, True)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_auth(host: str) -> None:
    check_exposure(host, None, False)


def test_malformed_auth_is_one_line(capsys, tmp_path) -> None:
    assert main(["serve", "--db", str(tmp_path / "db"), "--auth", "nocolon"]) == 2
    assert "user:password" in capsys.readouterr().err
