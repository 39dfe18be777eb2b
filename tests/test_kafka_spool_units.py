"""The Kafka spool's parts without a broker: the ledger (sans-I/O, a fake clock) and the
SQLite store (a real database in a temporary directory)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.upstreams.kafka_ledger import DELIVERED, FAILED, SPOOLED, UNKNOWN, SpoolLedger
from sidecar.upstreams.kafka_messages import Delivered, Outcomes, OutgoingMessage, classify
from sidecar.upstreams.kafka_spool import message_size
from sidecar.upstreams.kafka_store import DB_NAME, SpoolStore, decode_headers, encode_headers

# ---- the ledger -------------------------------------------------------------------


def test_a_key_queues_behind_its_spooled_messages_until_the_last_one_is_delivered() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    first = ledger.add("r1", b"k", 10, 100.0)
    second = ledger.add("r2", b"k", 10, 101.0)
    assert ledger.behind(b"k") and not ledger.behind(b"other") and not ledger.behind(None)
    ledger.deliver(first, "t", 0, 5, 102.0)
    assert ledger.behind(b"k"), "one message with the key still waits"
    ledger.deliver(second, "t", 0, 6, 103.0)
    assert not ledger.behind(b"k")


def test_a_failed_message_frees_its_key_too() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    seq = ledger.add("r1", b"k", 10, 100.0)
    assert ledger.fail(seq, "t", "topic gone", 101.0)
    assert not ledger.behind(b"k")
    assert ledger.status("r1", 102.0) == (FAILED, "t", -1, -1, "topic gone")


def test_messages_without_a_key_never_hold_others_back() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    ledger.add("r1", None, 10, 100.0)
    assert not ledger.behind(None)


def test_spool_order_is_the_order_messages_entered_and_the_oldest_age_follows_it() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    seqs = [ledger.add(f"r{i}", b"k", 1, 100.0 + i) for i in range(3)]
    assert seqs == sorted(seqs)
    assert ledger.oldest() == 100.0
    ledger.deliver(seqs[0], "t", 0, 0, 110.0)
    assert ledger.oldest() == 101.0
    assert (ledger.depth, ledger.bytes) == (2, 2)


def test_the_byte_bound_refuses_what_does_not_fit_and_marks_the_spool_full_until_one_leaves(
) -> None:
    ledger = SpoolLedger(max_bytes=100, retention=60)
    seq = ledger.add("r1", None, 60, 100.0)
    assert ledger.has_room(40) and ledger.takes_messages()
    assert not ledger.has_room(41)
    assert not ledger.takes_messages(), "a refusal makes the spool count as full"
    ledger.deliver(seq, "t", 0, 0, 101.0)
    assert ledger.takes_messages() and ledger.bytes == 0


def test_status_is_spooled_then_delivered_with_partition_and_offset() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    seq = ledger.add("r1", b"k", 10, 100.0)
    assert ledger.status("r1", 100.5).state == SPOOLED
    ledger.deliver(seq, "orders", 2, 41, 101.0)
    assert ledger.status("r1", 101.0) == (DELIVERED, "orders", 2, 41, "")
    assert ledger.status("never-spooled", 101.0) == UNKNOWN


def test_final_states_are_kept_for_retention_then_expire_in_order() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    a = ledger.add("a", None, 1, 0.0)
    b = ledger.add("b", None, 1, 0.0)
    ledger.deliver(a, "t", 0, 1, 10.0)
    ledger.deliver(b, "t", 0, 2, 30.0)
    assert ledger.expire(69.9) == []
    assert ledger.status("a", 69.9).state == DELIVERED
    assert ledger.status("a", 70.0) == UNKNOWN, "past retention, even before expire() ran"
    assert ledger.expire(70.0) == [a]
    assert ledger.status("b", 70.0).state == DELIVERED
    assert ledger.expire(1000.0) == [b]
    assert ledger.expire(2000.0) == []


def test_a_waiting_message_never_expires() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=1)
    ledger.add("a", None, 1, 0.0)
    assert ledger.expire(10_000.0) == []
    assert ledger.status("a", 10_000.0).state == SPOOLED


def test_a_held_message_is_kept_from_the_drain_until_its_first_send_reports() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    seq = ledger.add("a", b"k", 1, 0.0, held=True)
    assert ledger.is_held(seq) and ledger.held == 1
    ledger.release(seq)  # the first send failed: the drain sends the copy
    assert not ledger.is_held(seq) and ledger.is_waiting(seq)


def test_a_late_acknowledgement_of_a_held_message_settles_it_once() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    seq = ledger.add("a", b"k", 1, 0.0, held=True)
    assert ledger.deliver(seq, "t", 1, 7, 1.0)
    assert not ledger.deliver(seq, "t", 1, 8, 2.0), "already final: not twice"
    assert ledger.held == 0 and ledger.status("a", 2.0).offset == 7


def test_rows_found_at_start_keep_their_sequence_and_new_ones_follow() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    ledger.add("old", b"k", 5, 0.0, seq=41)
    assert ledger.add("new", b"k", 5, 1.0) == 42


# ---- outcomes with spooled messages --------------------------------------------------


def test_spooled_messages_answer_ok_and_count_as_a_fault_only_for_want_of_an_ack() -> None:
    outcomes = Outcomes(2)
    outcomes.deliver(0, 1, 5, 3)
    outcomes.spool(1)
    assert outcomes[1] == Delivered(-1, -1) and outcomes.spooled == {1}
    verdict = classify(outcomes)
    assert verdict.ok and not verdict.fault
    outcomes.unacked = True
    assert classify(outcomes).fault


def test_a_message_takes_its_key_value_and_headers_in_the_spool() -> None:
    m = OutgoingMessage(b"key", b"value", [("h", "12"), ("b", b"\x00\x01"), ("n", None)], -1)
    assert message_size(m) == 3 + 5 + 3 + 3 + 1


def test_headers_come_back_from_the_store_as_they_went_in() -> None:
    headers: list[tuple[str, str | bytes | None]] = [
        ("request-id", "abc"), ("bin", b"\xff\x00"), ("none", None)]
    assert decode_headers(encode_headers(headers)) == headers


# ---- the store --------------------------------------------------------------------


def _row(seq: int) -> tuple[object, ...]:
    return (seq, f"r{seq}", "t", b"k", b"v%d" % seq, encode_headers([("a", "b")]), -1, 5, 1.0)


async def test_concurrent_writes_share_commits_and_survive_a_reopen(tmp_path: Path) -> None:
    store = SpoolStore(str(tmp_path / "spool"), "targets.t.spool.dir")
    assert await store.open() == []
    await asyncio.gather(*(store.insert([_row(i)]) for i in range(1, 201)))
    assert store.commits < 20, f"{store.commits} commits for 200 concurrent writes"
    await store.finish([(DELIVERED, 0, 9, "", 2.0, 1)])
    await store.close()

    again = SpoolStore(str(tmp_path / "spool"), "targets.t.spool.dir")
    rows = await again.open()
    assert len(rows) == 200
    waiting = await again.waiting(0, 1000)
    assert [m.seq for m in waiting] == list(range(2, 201)), "oldest first, delivered left out"
    assert waiting[0].value == b"v2" and waiting[0].headers == [("a", "b")]
    delivered = next(r for r in rows if r.seq == 1)
    assert (delivered.state, delivered.offset, delivered.key) == (DELIVERED, 9, None)
    await again.delete([1])
    await again.close()


async def test_the_database_is_in_wal_mode_with_full_synchronous_commits(
        tmp_path: Path) -> None:
    store = SpoolStore(str(tmp_path), "k")
    await store.open()
    await store.insert([_row(1)])
    mode = await store._run(lambda: store._db.execute("PRAGMA journal_mode").fetchone()[0])
    sync = await store._run(lambda: store._db.execute("PRAGMA synchronous").fetchone()[0])
    await store.close()
    assert (mode, sync) == ("wal", 2)  # 2: FULL
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


async def test_a_second_store_on_the_same_directory_is_refused_naming_the_key(
        tmp_path: Path) -> None:
    first = SpoolStore(str(tmp_path), "targets.t.spool.dir")
    await first.open()
    second = SpoolStore(str(tmp_path), "targets.t.spool.dir")
    with pytest.raises(ConfigError) as refused:
        await second.open()
    assert refused.value.problems == [
        "targets.t.spool.dir: cannot open the spool: in use by another process "
        "(its spool.lock is held)"]
    await first.close()


async def test_a_directory_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = SpoolStore(os.path.join(blocker, "spool"), "targets.t.spool.dir")
    with pytest.raises(ConfigError) as refused:
        await store.open()
    assert refused.value.problems[0].startswith("targets.t.spool.dir: cannot open the spool:")


# ---- config ------------------------------------------------------------------------


def _target_config(spool: object) -> dict[str, object]:
    return {"listeners": [{"name": "app", "socket": "/tmp/sidecar-spool-units.sock"}],
            "targets": {"events": {"kind": "kafka", "bootstrap_servers": ["k:9092"],
                                   "spool": spool}}}


def test_spool_keys_are_read_as_sizes_and_durations(tmp_path: Path) -> None:
    from sidecar.config import Spool
    from sidecar.config_loader import parse_config

    config = parse_config(_target_config(
        {"dir": str(tmp_path / "s"), "max_bytes": "1GiB", "retention": "1h"}))
    assert config.targets["events"].spool == Spool(str(tmp_path / "s"), 1024**3, 3600.0)
    assert parse_config(_target_config({"dir": str(tmp_path)})).targets[
        "events"].spool == Spool(str(tmp_path))


def test_a_kafka_target_has_no_spool_unless_configured() -> None:
    from sidecar.config_loader import parse_config

    config = _target_config(None)
    del config["targets"]["events"]["spool"]  # type: ignore[index]
    assert parse_config(config).targets["events"].spool is None  # type: ignore[attr-defined]


def test_bad_spool_keys_are_named_by_key_path() -> None:
    from sidecar.config_loader import parse_config

    with pytest.raises(ConfigError) as bad:
        parse_config(_target_config({"dir": "relative/dir", "max_bytes": "lots",
                                     "retention": "5", "size": 1}))
    assert sorted(bad.value.problems) == sorted([
        "targets.events.spool.dir: must be an absolute path",
        "targets.events.spool.max_bytes: must be a size (512KiB, 16MiB, or bytes), got 'lots'",
        "targets.events.spool.retention: must be a duration with a unit (250ms, 5s, 2m), "
        "got '5'",
        "targets.events.spool.size: unknown key (known: dir, max_bytes, retention)",
    ])
    with pytest.raises(ConfigError) as missing:
        parse_config(_target_config({}))
    assert missing.value.problems == ["targets.events.spool.dir: is required"]


async def test_a_producer_librdkafka_refuses_at_start_releases_the_spool_dir(
        tmp_path: Path) -> None:
    from sidecar.config_loader import parse_config
    from sidecar.upstreams.kafka import KafkaUpstream

    raw = _target_config({"dir": str(tmp_path / "spool")})
    raw["targets"]["events"]["producer"] = {"config": {"no.such.setting": "1"}}  # type: ignore[index]
    bad = parse_config(raw).targets["events"]
    with pytest.raises(ConfigError) as refused:
        await KafkaUpstream(bad).start()  # type: ignore[arg-type]
    assert refused.value.problems[0].startswith("targets.events.producer:")
    del raw["targets"]["events"]["producer"]  # type: ignore[attr-defined]
    good = KafkaUpstream(parse_config(raw).targets["events"])  # type: ignore[arg-type]
    await good.start()  # the directory's lock was given back
    await good.close(0)


def test_a_call_keeps_its_place_in_the_spool_order_while_it_sends() -> None:
    """A message sent, then spooled at its deadline, goes before a later message with its
    key spooled meanwhile; the drain holds back what comes after a call still sending."""
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    first = ledger.reserve(2)  # a call of two messages begins
    assert ledger.barrier() == first
    later = ledger.add("later", b"k", 1, 1.0)  # spooled at once (brokers found down)
    assert later > first + 1
    early = ledger.add("early", b"k", 1, 2.0, held=True, seq=first + 1)  # at its deadline
    assert early < later and ledger.next_seq == later + 1
    ledger.sent(first)
    assert ledger.barrier() is None


def test_the_barrier_is_the_oldest_call_still_sending() -> None:
    ledger = SpoolLedger(max_bytes=1000, retention=60)
    a, b = ledger.reserve(3), ledger.reserve(1)
    ledger.sent(a)
    assert ledger.barrier() == b
    ledger.sent(b)
    ledger.sent(b)  # twice is harmless
    assert ledger.barrier() is None
