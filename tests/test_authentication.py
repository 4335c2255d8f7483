"""Bearer tokens (CONTRACT 3 row 1): a known token is remembered, an unknown one is looked up every time.

A business's token never changes and no business is deleted, so a token
that once named a business always does: the poll that repeats it costs no
hashing and no query. A token that names no business is never remembered,
and the memory of known tokens is bounded.
"""

from __future__ import annotations

import pytest

from conftest import READS_SQLITE
from recsvc.core import service as service_module
from recsvc.storage.store import Tx


@pytest.fixture
def counted(monkeypatch):
    """Counts of token hashes computed and business lookups made."""
    counts = {"hashes": 0, "lookups": 0}
    hash_token, business_for_token = service_module.hash_token, Tx.business_for_token

    def counting_hash(token):
        counts["hashes"] += 1
        return hash_token(token)

    def counting_lookup(tx, token_hash):
        counts["lookups"] += 1
        return business_for_token(tx, token_hash)

    monkeypatch.setattr(service_module, "hash_token", counting_hash)
    monkeypatch.setattr(Tx, "business_for_token", counting_lookup)
    return counts


@pytest.mark.sqlite_store_only(READS_SQLITE)
def test_a_known_token_is_looked_up_once_and_then_remembered(make_harness, counted):
    h = make_harness(workers=0)
    token = h.business()
    counted.update(hashes=0, lookups=0)  # creating the business hashed its token
    service = h.app.service
    first = service.authenticate(token)
    assert first is not None and counted == {"hashes": 1, "lookups": 1}
    assert [service.authenticate(token) for _ in range(5)] == [first] * 5
    assert counted == {"hashes": 1, "lookups": 1}


@pytest.mark.sqlite_store_only(READS_SQLITE)
def test_an_unknown_token_is_looked_up_every_time_and_never_remembered(make_harness, counted):
    h = make_harness(workers=0)
    service = h.app.service
    assert [service.authenticate("not-a-token") for _ in range(3)] == [None] * 3
    assert counted == {"hashes": 3, "lookups": 3}


def test_each_business_keeps_its_own_token(make_harness):
    h = make_harness(workers=0)
    tokens = [h.business(name) for name in ("a", "b")]
    service = h.app.service
    ids = [service.authenticate(token) for token in tokens]
    assert len(set(ids)) == 2
    assert [service.authenticate(token) for token in tokens] == ids  # from memory now
    assert service.authenticate(tokens[0] + "x") is None and service.authenticate(tokens[0][:-1]) is None


@pytest.mark.sqlite_store_only(READS_SQLITE)
def test_the_memory_of_known_tokens_is_bounded(make_harness, monkeypatch, counted):
    h = make_harness(workers=0)
    service = h.app.service
    monkeypatch.setattr(service, "KNOWN_TOKENS", 3)
    tokens = [h.business(f"b{n}") for n in range(5)]
    ids = [service.authenticate(token) for token in tokens]
    counted.update(hashes=0, lookups=0)
    # At most 3 of the 5 are remembered, so asking all 5 again looks up at least 2.
    assert [service.authenticate(token) for token in tokens] == ids
    assert counted["lookups"] >= 2 and counted["hashes"] == counted["lookups"]


@pytest.mark.sqlite_store_only(READS_SQLITE)
def test_as_many_tokens_as_the_memory_holds_are_all_remembered_and_one_more_makes_room(make_harness, monkeypatch,
                                                                                         counted):
    h = make_harness(workers=0)
    service = h.app.service
    monkeypatch.setattr(service, "KNOWN_TOKENS", 3)
    tokens = [h.business(f"b{n}") for n in range(4)]
    for token in tokens[:3]:
        service.authenticate(token)
    counted.update(hashes=0, lookups=0)
    for token in tokens[:3]:
        service.authenticate(token)
    assert counted["lookups"] == 0, "three tokens fit in a memory of three"
    service.authenticate(tokens[3])
    counted.update(hashes=0, lookups=0)
    for token in tokens[:3]:
        service.authenticate(token)
    assert counted["lookups"] >= 1, "a fourth token was remembered beside three"
