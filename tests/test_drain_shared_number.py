"""One number for a drain's batch of locks (ordering.shared_number).

A drain used to draw a number per repair, inside each name's lock: on SQLite a write
per row, which the hosts' threads queued on. A batch now draws one, in its first lock;
what these tests pin down is that the number is shared only where it was asked for.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_resto import ordering


def test_locks_in_a_block_share_the_number_the_first_one_drew(db):
    before = ordering.next_seq()
    with ordering.shared_number():
        with ordering.ordered("s", "a.txt", timeout=1) as first:
            pass
        with ordering.ordered("s", "b.txt", timeout=1) as second:
            pass
    assert first == second > before
    # Outside the block, every lock draws its own number again.
    with ordering.ordered("s", "a.txt", timeout=1) as after:
        assert after > first


def test_a_block_without_locks_draws_nothing(db):
    with CaptureQueriesContext(connection) as captured, ordering.shared_number():
        pass
    assert captured.captured_queries == []


def test_a_nested_block_draws_its_own_and_the_outer_one_keeps_its(db):
    with ordering.shared_number():
        with ordering.ordered("s", "a.txt", timeout=1) as outer:
            pass
        with ordering.shared_number(), ordering.ordered("s", "b.txt", timeout=1) as inner:
            pass
        with ordering.ordered("s", "c.txt", timeout=1) as outer_again:
            pass
    assert inner > outer == outer_again


@pytest.mark.django_db(transaction=True)
def test_another_threads_locks_draw_their_own_numbers():
    got: list[int] = []

    def other() -> None:
        try:
            with ordering.ordered("s", "b.txt", timeout=1) as seq:
                got.append(seq)
        finally:
            connection.close()

    with ordering.shared_number():
        with ordering.ordered("s", "a.txt", timeout=1) as shared:
            pass
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        with ordering.ordered("s", "c.txt", timeout=1) as again:
            pass
    assert got[0] > shared == again


def test_a_number_older_than_shared_for_is_replaced(db, monkeypatch):
    # A repair that waited long on a slow host settles with a fresh number, so that
    # rows failed again meanwhile are not all left for the next pass.
    monkeypatch.setattr(ordering, "SHARED_FOR", 0.0)
    with ordering.shared_number():
        with ordering.ordered("s", "a.txt", timeout=1) as first:
            pass
        with ordering.ordered("s", "b.txt", timeout=1) as second:
            pass
    assert second > first
