"""pipeline.forked: items made by this process and a forked child, given back in order (real forks)."""

from __future__ import annotations

import os
import threading

import pytest

from pipeline import forked
from pipeline.forked import made_in_order

COUNT = 600


@pytest.fixture(autouse=True)
def threads_left_running_are_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads earlier tests left in this process (their servers) would keep every item here."""
    monkeypatch.setattr(forked, "_HARMLESS", forked._HARMLESS | {t.name for t in threading.enumerate()})


def encode(item: tuple[int, int]) -> bytes:
    return f"{item[0]} {item[1]}".encode()


def decode(data: bytes) -> tuple[int, int]:
    number, pid = data.split()
    return int(number), int(pid)


def by_whom(number: int) -> tuple[int, int]:
    """The item `number`, with the PID of the process that made it."""
    return number, os.getpid()


def assert_reaped(pids: set[int]) -> None:
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_the_odd_items_are_made_by_a_child_and_all_come_in_order() -> None:
    items = list(made_in_order(by_whom, COUNT, encode, decode))

    assert [number for number, _ in items] == list(range(COUNT))
    here = os.getpid()
    assert {pid for number, pid in items if number % 2 == 0} == {here}
    children = {pid for number, pid in items if number % 2 == 1}
    assert len(children) == 1 and here not in children
    assert_reaped(children)


def test_what_the_child_fails_on_is_made_here() -> None:
    here = os.getpid()

    def make(number: int) -> tuple[int, int]:
        if number == 301 and os.getpid() != here:
            raise ValueError("only the child fails")
        return by_whom(number)

    items = list(made_in_order(make, COUNT, encode, decode))

    assert [number for number, _ in items] == list(range(COUNT))
    made_here = {number for number, pid in items if pid == here}
    assert made_here == {n for n in range(COUNT) if n % 2 == 0 or n >= 301}  # the child stopped at 301
    assert_reaped({pid for _, pid in items if pid != here})


def test_an_error_is_raised_here_in_order_as_without_a_child() -> None:
    def make(number: int) -> tuple[int, int]:
        if number == 301:
            raise ValueError("item 301 is bad")
        return by_whom(number)

    got: list[tuple[int, int]] = []
    with pytest.raises(ValueError, match="item 301 is bad"):
        for item in made_in_order(make, COUNT, encode, decode):
            got.append(item)

    assert [number for number, _ in got] == list(range(301))
    assert_reaped({pid for _, pid in got if pid != os.getpid()})


def test_a_child_is_stopped_and_reaped_when_the_caller_stops_early() -> None:
    items = made_in_order(by_whom, COUNT, encode, decode)
    first = [next(items) for _ in range(10)]
    children = {pid for _, pid in first if pid != os.getpid()}
    assert len(children) == 1

    items.close()

    assert_reaped(children)


@pytest.mark.parametrize("name", ["worker", "http-deadlines"])
def test_no_child_while_another_thread_runs_but_the_http_deadline_watchdog(name: str) -> None:
    """A fork copies only the calling thread: none while another runs. The HTTP client's watchdog thread
    (`pipeline.http`) lives on once a request was made (the mirror probes) and takes no lock a child needs."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(10,), name=name, daemon=True)
    other.start()
    try:
        items = list(made_in_order(by_whom, COUNT, encode, decode))
    finally:
        stop.set()
        other.join(timeout=10)
    children = {pid for number, pid in items if pid != os.getpid()}
    assert len(children) == (1 if name == "http-deadlines" else 0)
    assert [number for number, _ in items] == list(range(COUNT))


def test_the_http_deadline_watchdog_is_the_thread_named_harmless() -> None:
    from pipeline.http import WATCHDOG_THREAD

    assert WATCHDOG_THREAD in forked._HARMLESS


def test_no_child_for_few_items() -> None:
    items = list(made_in_order(by_whom, forked.MIN_ITEMS - 1, encode, decode))
    assert items == [(number, os.getpid()) for number in range(forked.MIN_ITEMS - 1)]


def test_each_share_of_segment_items_has_a_child_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child's own memory grows as it writes to pages it shares with this process: a new child is forked
    every `SEGMENT` items, and a short tail joins the last share."""
    monkeypatch.setattr(forked, "SEGMENT", 100)
    monkeypatch.setattr(forked, "MIN_ITEMS", 50)
    items = list(made_in_order(by_whom, 640, encode, decode))

    assert [number for number, _ in items] == list(range(640))
    here = os.getpid()
    assert {pid for number, pid in items if number % 2 == 0} == {here}
    children = [pid for number, pid in items if number % 2 == 1]
    shares = [sorted({pid for pid in children[i : i + 50]}) for i in range(0, 250, 50)]
    assert all(len(share) == 1 for share in shares) and len({share[0] for share in shares}) == 5
    assert set(children[250:]) == {children[250]}  # 500 to 639: one share (the tail of 40 joined it)
    assert_reaped(set(children))
