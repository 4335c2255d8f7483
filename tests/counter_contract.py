"""The retry counter's promise, in Redis's words, for every backend (CONTRACT 3).

A backend's test module subclasses ``CounterContract`` and provides the
fixture ``counter_env`` -> ``(counter, advance)``: ``advance(seconds)`` lets
that much time pass for the counter (a fake clock for memory://, a real
sleep for Redis). Windows are a fraction of a second so the Redis run stays
short; waits leave at least 0.2 s of slack either side of an expiry.
"""

from __future__ import annotations

import threading

import pytest

from recsvc.storage.counter import retry_key

KEY = retry_key(7, "CA1")
OTHER = retry_key(7, "CA2")
WINDOW = 0.5  # seconds; every wait below is 0.25 s or 0.75 s, well clear of it
LONG = 100  # seconds; a TTL the test never waits for


class CounterContract:
    @pytest.fixture
    def counter(self, counter_env):
        return counter_env[0]

    @pytest.fixture
    def advance(self, counter_env):
        return counter_env[1]

    # ---- INCR ----

    def test_incr_on_a_missing_key_is_1(self, counter):
        assert counter.incr(KEY) == 1
        assert counter.incr(KEY) == 2
        assert counter.get(KEY) == 2

    def test_incr_creates_a_key_without_expiry(self, counter):
        counter.incr(KEY)
        assert counter.ttl(KEY) == -1

    def test_incr_keeps_the_ttl(self, counter):
        counter.incr(KEY)
        assert counter.expire(KEY, LONG) is True
        counter.incr(KEY)
        assert counter.ttl(KEY) == LONG

    def test_incr_does_not_make_an_expiring_key_last(self, counter, advance):
        counter.incr(KEY)
        counter.expire(KEY, WINDOW)
        advance(0.25)
        counter.incr(KEY)
        advance(0.5)
        assert counter.get(KEY) is None

    def test_keys_are_independent(self, counter):
        counter.incr(KEY)
        counter.incr(KEY)
        assert counter.incr(OTHER) == 1
        assert counter.get(KEY) == 2

    # ---- EXPIRE and TTL ----

    def test_ttl_is_minus_2_when_absent(self, counter):
        assert counter.ttl(KEY) == -2

    def test_expire_on_a_missing_key_is_false_and_creates_nothing(self, counter):
        assert counter.expire(KEY, LONG) is False
        assert counter.ttl(KEY) == -2

    def test_expire_restarts_the_ttl_longer_or_shorter(self, counter):
        counter.incr(KEY)
        counter.expire(KEY, LONG)
        counter.expire(KEY, 2 * LONG)
        assert counter.ttl(KEY) == 2 * LONG
        counter.expire(KEY, 10)
        assert counter.ttl(KEY) == 10

    def test_expire_restarts_the_window_from_now(self, counter, advance):
        counter.incr(KEY)
        counter.expire(KEY, WINDOW)
        advance(0.25)
        counter.expire(KEY, WINDOW)
        advance(0.25)  # 0.5 s since the first EXPIRE: alive only because it restarted
        assert counter.get(KEY) == 1

    def test_expire_with_no_time_left_deletes_the_key(self, counter):
        counter.incr(KEY)
        assert counter.expire(KEY, 0) is True
        assert counter.ttl(KEY) == -2

    def test_ttl_rounds_fractional_windows_to_the_nearest_second(self, counter):
        counter.incr(KEY)
        counter.expire(KEY, 2.7)
        assert counter.ttl(KEY) == 3
        counter.expire(KEY, 2.2)
        assert counter.ttl(KEY) == 2

    def test_a_fractional_window_expires_on_time(self, counter, advance):
        counter.incr(KEY)
        counter.expire(KEY, 0.3)
        assert counter.get(KEY) == 1
        advance(0.55)
        assert counter.get(KEY) is None
        assert counter.ttl(KEY) == -2

    # ---- GET and DEL ----

    def test_get_is_none_when_absent(self, counter):
        assert counter.get(KEY) is None

    def test_delete_returns_1_then_0(self, counter):
        counter.incr(KEY)
        assert counter.delete(KEY) == 1
        assert counter.delete(KEY) == 0
        assert counter.get(KEY) is None
        assert counter.ttl(KEY) == -2

    def test_delete_of_a_missing_key_is_0(self, counter):
        assert counter.delete(KEY) == 0

    def test_the_count_restarts_at_1_after_delete(self, counter):
        counter.incr_and_expire(KEY, LONG)
        counter.incr_and_expire(KEY, LONG)
        counter.delete(KEY)
        assert counter.incr_and_expire(KEY, LONG) == 1

    # ---- INCR + EXPIRE: the retry of CONTRACT 3, row 10b ----

    def test_incr_and_expire_returns_the_count_and_sets_the_window(self, counter):
        assert counter.incr_and_expire(KEY, LONG) == 1
        assert counter.ttl(KEY) == LONG
        assert counter.incr_and_expire(KEY, LONG) == 2

    def test_incr_and_expire_sets_the_ttl_every_time(self, counter):
        counter.incr_and_expire(KEY, LONG)
        counter.incr_and_expire(KEY, 10)  # shorter: restarted, not the longer of the two
        assert counter.ttl(KEY) == 10
        counter.incr_and_expire(KEY, LONG)
        assert counter.ttl(KEY) == LONG

    def test_the_window_slides_with_every_retry(self, counter, advance):
        assert counter.incr_and_expire(KEY, WINDOW) == 1
        advance(0.25)
        assert counter.incr_and_expire(KEY, WINDOW) == 2
        advance(0.25)
        assert counter.incr_and_expire(KEY, WINDOW) == 3
        advance(0.25)  # 0.75 s after the first retry: a fixed window would be gone
        assert counter.get(KEY) == 3

    def test_the_key_is_gone_after_a_quiet_window(self, counter, advance):
        counter.incr_and_expire(KEY, WINDOW)
        counter.incr_and_expire(KEY, WINDOW)
        advance(0.75)
        assert counter.get(KEY) is None
        assert counter.ttl(KEY) == -2
        assert counter.delete(KEY) == 0

    def test_the_count_restarts_at_1_after_a_quiet_window(self, counter, advance):
        counter.incr_and_expire(KEY, WINDOW)
        counter.incr_and_expire(KEY, WINDOW)
        advance(0.75)
        assert counter.incr_and_expire(KEY, WINDOW) == 1

    def test_a_fractional_retry_window_is_kept(self, counter, advance):
        counter.incr_and_expire(KEY, 0.3)
        advance(0.1)
        assert counter.get(KEY) == 1
        advance(0.45)
        assert counter.get(KEY) is None

    # ---- many threads ----

    @pytest.mark.parametrize("command", ["incr", "incr_and_expire"])
    def test_16_threads_of_50_increments_count_exactly_800(self, counter, command):
        start = threading.Barrier(16)
        errors: list[BaseException] = []

        def count() -> None:
            try:
                start.wait(timeout=10)
                for _ in range(50):
                    if command == "incr":
                        counter.incr(KEY)
                    else:
                        counter.incr_and_expire(KEY, LONG)
            except BaseException as exc:  # reported below, in the test's own thread
                errors.append(exc)

        threads = [threading.Thread(target=count) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors
        assert not any(thread.is_alive() for thread in threads)
        assert counter.get(KEY) == 800
