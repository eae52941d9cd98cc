"""The SSH host's live-update relay: one listener's notices, one line each, through every session's pipe.

No database is needed here: the host side (:class:`NoticeRelay`, its outlets) and the app side
(:class:`PipeListener`, ``read_session_fd``) meet over real pipes. The end-to-end path (two sessions,
one listening connection between them) is in test_host_session.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from carecli.cli.app_cmd import read_session_fd
from carecli.data import notify
from carecli.data.notify import Change, Notice, PipeListener, notice_from_line, notice_line
from carecli.errors import ConfigError
from carecli.ssh import relay as relay_module
from carecli.ssh.relay import NoticeRelay

ENTITIES = ("member", "call_record", "risk_flag", "enrollment", "metadata", "insurance_plan")

ids = st.uuids(version=4)
changes = st.one_of(
    st.builds(Change, st.sampled_from(ENTITIES)),  # "many rows of this kind"
    st.builds(Change, st.sampled_from(ENTITIES), ids, st.none() | ids, st.none() | ids, st.none() | ids),
)
notices = st.one_of(
    st.just(Notice(full_refresh=True)),
    st.builds(Notice, st.lists(changes, min_size=1, max_size=5, unique=True).map(tuple),
              st.none() | st.text("abcdef0123456789-", min_size=1, max_size=20)),
)


def collect(listener: PipeListener) -> list[Notice]:
    heard: list[Notice] = []
    listener.add(heard.append)
    return heard


def run_to_end(listener: PipeListener) -> None:
    listener.start()
    assert listener._thread is not None
    listener._thread.join(10)
    assert not listener._thread.is_alive()
    assert not listener.listening  # the pipe ended


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(notices, max_size=12), st.lists(st.integers(1, 400), min_size=1, max_size=20), st.binary(max_size=30))
def test_every_relayed_notice_arrives_once_in_order_however_the_pipe_splits_it(sent, cuts, head) -> None:
    stream = b"".join(notice_line(notice) for notice in sent)
    # What read_session_fd read past the token is handed over first; the rest comes through the pipe in pieces.
    already, stream = stream[:len(head)], stream[len(head):]
    read_end, write_end = os.pipe()
    listener = PipeListener(read_end, already)
    heard = collect(listener)

    def write() -> None:
        data = stream
        for cut in cuts * (1 + len(data) // max(1, sum(cuts))):
            if not data:
                break
            os.write(write_end, data[:cut])
            data = data[cut:]
        if data:
            os.write(write_end, data)
        os.close(write_end)

    writer = threading.Thread(target=write)
    writer.start()
    run_to_end(listener)
    writer.join()
    expected = [notice if notice.full_refresh else Notice(tuple(dict.fromkeys(notice.changes)), notice.source)
                for notice in sent]
    assert heard == expected
    assert listener.stats.notices == len(sent)


def test_a_garbled_line_is_dropped_and_an_overlong_one_becomes_a_full_refresh() -> None:
    read_end, write_end = os.pipe()
    listener = PipeListener(read_end)
    heard = collect(listener)
    member = Change("member", uuid.uuid4(), uuid.uuid4())
    good = notice_line(Notice((member,), "s1"))
    overlong = b"x" * (notify.MAX_LINE_BYTES + 10) + b"\n"
    listener.start()
    os.write(write_end, b"not json\n" + b'{"v": 99}\n' + good)
    for start in range(0, len(overlong), 4096):
        os.write(write_end, overlong[start:start + 4096])
    os.write(write_end, good)
    os.close(write_end)
    run_to_end(listener)
    assert heard == [Notice((member,), "s1"), Notice(full_refresh=True), Notice((member,), "s1")]


def test_line_format_round_trips_and_says_nothing_but_ids() -> None:
    change = Change("member", uuid.uuid4(), uuid.uuid4(), None, uuid.uuid4())
    line = notice_line(Notice((change,), "src"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert notice_from_line(line.rstrip(b"\n")) == Notice((change,), "src")
    assert notice_from_line(notice_line(Notice(full_refresh=True)).rstrip(b"\n")) == Notice(full_refresh=True)
    assert notice_from_line(b"\xff\xfe") is None


# -- the host side -------------------------------------------------------------------------------------


def a_relay(loop: asyncio.AbstractEventLoop) -> NoticeRelay:
    # Never started here: the test hands notices to it as its listener would (no connection is made).
    return NoticeRelay(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), loop)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


async def test_an_app_that_stops_reading_gets_one_full_refresh_instead_of_what_did_not_fit(monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "MAX_PENDING_BYTES", 20_000)
    loop = asyncio.get_running_loop()
    relay = a_relay(loop)
    read_end, write_end = os.pipe()
    outlet = relay.attach(write_end)
    try:
        member = Change("member", uuid.uuid4(), uuid.uuid4())
        line = notice_line(Notice((member,), "s"))
        # Far more than a pipe (64 KiB) plus the outlet's buffer hold: the loop never blocks on it.
        sent = 2 * 65536 // len(line) + 2 * 20_000 // len(line)
        for _ in range(sent):
            relay._heard(Notice((member,), "s"))
        await asyncio.sleep(0.05)  # the calls handed to the loop
        assert relay.overflows >= 1
        assert len(outlet.pending) <= 20_000 + len(line)
        # The app reads again: what reaches it parses, and ends in a full refresh (what it missed).
        received = bytearray()
        for _ in range(100):
            received += drain(read_end)
            await asyncio.sleep(0.01)
            if not outlet.pending:
                received += drain(read_end)
                break
        assert not outlet.pending
        parsed = [notice_from_line(one) for one in bytes(received).split(b"\n") if one]
        assert all(notice is not None for notice in parsed)
        # What came before the overflow, "read everything again" in place of what did not fit, then what came after
        assert Notice(full_refresh=True) in parsed
        assert len(parsed) < sent
    finally:
        outlet.close()
        os.close(read_end)


async def test_an_app_gone_is_forgotten_and_the_others_still_hear() -> None:
    loop = asyncio.get_running_loop()
    relay = a_relay(loop)
    gone_read, gone_write = os.pipe()
    kept_read, kept_write = os.pipe()
    gone, kept = relay.attach(gone_write), relay.attach(kept_write)
    os.close(gone_read)  # the app ended
    try:
        notice = Notice((Change("call_record", uuid.uuid4()),), "s")
        relay._fan_out(notice_line(notice))
        assert gone.closed and gone not in relay.outlets
        assert kept in relay.outlets
        assert notice_from_line(drain(kept_read).rstrip(b"\n")) == notice
    finally:
        kept.close()
        os.close(kept_read)


# -- the app side: the token, then the relay ----------------------------------------------------------


def test_a_token_ended_by_a_newline_leaves_the_pipe_open_for_the_relay() -> None:
    read_end, write_end = os.pipe()
    token = "t" * 43
    early = notice_line(Notice(full_refresh=True))
    os.write(write_end, token.encode() + b"\n" + early)
    got, rest = read_session_fd(read_end)
    assert got == token
    assert rest is not None and early.startswith(rest)
    listener = PipeListener(read_end, rest)
    heard = collect(listener)
    os.close(write_end)
    run_to_end(listener)
    assert heard == [Notice(full_refresh=True)]


def test_a_token_ended_by_the_pipes_end_closes_it() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"t" * 43)
    os.close(write_end)
    assert read_session_fd(read_end) == ("t" * 43, None)
    with pytest.raises(OSError):
        os.fstat(read_end)


@pytest.mark.parametrize("data", [b"", b"\n", b"  \n" + b"x" * 10, b"x" * 600],
                         ids=["empty", "newline", "blank", "too long"])
def test_no_token_is_a_clear_error_and_the_pipe_is_closed(data) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    with pytest.raises(ConfigError):
        read_session_fd(read_end)
    with pytest.raises(OSError):
        os.fstat(read_end)
