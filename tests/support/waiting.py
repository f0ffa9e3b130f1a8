"""Waiting for a server-side change in tests: poll a condition, fail with a message on timeout."""

from __future__ import annotations

import time

import pytest


def wait_for(condition, timeout: float = 30.0, what: str = "the change to take effect") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
