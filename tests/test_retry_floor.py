"""The jobs table as the floor under the retry counter (CONTRACT 3, the retry counter), at its edges.

A counter that forgot its count (a Redis restarted empty) still numbers the
next retry after the last one on record; and the record stops counting at
the very instant the counter's key expires, a whole retry window after the
last retry, not one second later.
"""

from __future__ import annotations

from contract_steps import PAST_JOB_TIMEOUT, call_with_recording, jobs_of, new_business, retry_counter
from test_fail_fast import RETRY_WINDOW, hung_pool, play_and_hang  # noqa: F401 (hung_pool is a fixture)

from recsvc.storage.counter import retry_key


def test_a_counter_that_forgot_its_count_still_numbers_the_retry_after_the_last_on_record(hung_pool):
    h = hung_pool()
    acme = new_business(h)
    call_with_recording(h, acme, "CAFLOOR", hang=True)
    play_and_hang(h, acme, "CAFLOOR", 0)
    h.advance(PAST_JOB_TIMEOUT)
    play_and_hang(h, acme, "CAFLOOR", 1)
    h.advance(PAST_JOB_TIMEOUT)
    h.app.counter.delete(retry_key(acme.id, "CAFLOOR"))  # as a shared counter restarted empty would

    answer = h.play(acme.token, "CAFLOOR")

    assert (answer.status, answer.json["attempt"]) == (202, 2)
    assert jobs_of(h, acme, "CAFLOOR")[0]["attempt"] == 2


def test_the_record_stops_counting_when_the_key_expires_a_whole_window_after_the_last_retry(hung_pool):
    h = hung_pool(workers=5, max_retry_attempts=1)
    acme = new_business(h)
    call_with_recording(h, acme, "CAEDGE", hang=True)
    play_and_hang(h, acme, "CAEDGE", 0)
    h.advance(PAST_JOB_TIMEOUT)
    play_and_hang(h, acme, "CAEDGE", 1)  # the last retry: its job and its key's TTL start now
    h.advance(PAST_JOB_TIMEOUT)
    assert h.play(acme.token, "CAEDGE").status == 500  # the limit of 1 is reached

    h.advance(RETRY_WINDOW - PAST_JOB_TIMEOUT)  # exactly one window after the last retry
    assert retry_counter(h, acme, "CAEDGE")["ttl"] == -2

    answer = h.play(acme.token, "CAEDGE")
    assert (answer.status, answer.json["attempt"]) == (202, 1)
