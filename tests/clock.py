"""A manual clock for code that waits: `sleep` advances time instead of sleeping, and every
wait is recorded, so tests check timeouts and back-off without taking any time."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now
