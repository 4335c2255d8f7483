"""The two stores offer one interface: every method the service, the workers and the sweeper call on a
store's transaction exists on both (SQLite's ``Tx`` and Redis's ``RedisTx``), with the same parameters."""

from __future__ import annotations

import inspect
import os
import re

from recsvc.storage.redis_store import RedisStore, RedisTx
from recsvc.storage.store import Store, Tx

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recsvc")
CALL = re.compile(r"\btx\.([a-z_]+)\(")
STORE_CALL = re.compile(r"\bstore\.([a-z_]+)\b")
# Steps of one store only, each called where the store says it is that kind (``optimistic``,
# ``unique_file_names``, ``leases``): a decision applied by compare-and-set, a file recorded after its
# rename, a lease check (Redis); a file recorded under the write lock around its rename (SQLite).
REDIS_ONLY = {"apply_play", "complete_job", "fail_lost_leases"}
SQLITE_ONLY = {"upsert_recording", "complete_owned_job"}


def calls_outside_storage(pattern: re.Pattern) -> set[str]:
    names = set()
    for folder, _dirs, files in os.walk(ROOT):
        if os.path.basename(folder) == "storage":
            continue
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as source:
                    names.update(pattern.findall(source.read()))
    return names


def test_every_transaction_method_the_rest_of_recsvc_calls_exists_on_both_stores_alike():
    used = calls_outside_storage(CALL)
    assert {"play_snapshot", "claim_next_job", "beat", "put_call", "fail_job"} <= used  # the pattern finds them

    for name in sorted(used):
        if name in REDIS_ONLY:
            assert hasattr(RedisTx, name) and not hasattr(Tx, name), name
            continue
        if name in SQLITE_ONLY:
            assert hasattr(Tx, name) and not hasattr(RedisTx, name), name
            continue
        assert hasattr(Tx, name) and hasattr(RedisTx, name), name
        assert inspect.signature(getattr(Tx, name)) == inspect.signature(getattr(RedisTx, name)), name


def test_every_store_attribute_the_rest_of_recsvc_reads_exists_on_both_stores():
    used = calls_outside_storage(STORE_CALL) - {"data_lost_listeners", "listen"}  # read where store.remote
    assert {"writing", "reading", "single", "optimistic", "leases"} <= used

    for name in sorted(used):
        assert hasattr(Store, name) and hasattr(RedisStore, name), name
