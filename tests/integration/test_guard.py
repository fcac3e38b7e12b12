"""The connection guard (src/guard) in front of the real daemon.

Every client here binds its socket to its own 127.A.B.C source before
connecting (all of 127/8 reaches lo), so one test can play many addresses
and networks.  127.0.0.1 stays allowlisted so that the harness's own
readiness probes never count against the limits under test.
"""
import signal
import socket
import threading
import time

import pytest

from harness import SLOW, RawSMTP, StrataError, check_reply, free_port, make_message, queued_id

HOST = "mx.strata.test"
REFUSAL = "421 4.7.0 %s Too many connections from your network, try again later" % HOST
ALICE = "alice@local.example"

# Every limit off unless a test sets it: the tests then say exactly what binds.
OPEN = {
    "guard.allow": "127.0.0.1",
    "guard.mx.addr.rate": "0", "guard.mx.addr.concurrency": "0",
    "guard.mx.net.rate": "0", "guard.mx.net.concurrency": "0",
    "guard.user.addr.rate": "0", "guard.user.addr.concurrency": "0",
    "guard.user.net.rate": "0", "guard.user.net.concurrency": "0",
    "smtp.max_connections": "5000",
    "guard.smtp.banner_delay": "0",   # tests/integration/test_guard2.py covers it
}


def options(**kw):
    o = dict(OPEN)
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


class SourcedSMTP(RawSMTP):
    """RawSMTP from a chosen source address."""

    def __init__(self, port, source, timeout=None):   # pylint: disable=super-init-not-called
        self.timeout = timeout if timeout is not None else 10 * SLOW
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout,
                                             source_address=(source, 0))
        self.buf = b""
        self.closed = False


def first_line(s, source, port=None):
    """Connects from source; returns (client, first line or None at EOF)."""
    c = SourcedSMTP(port or s.smtp_port, source)
    line = c.read_line()
    return c, (line.decode() if line is not None else None)


def expect_refused(s, source, port=None, line=REFUSAL):
    c, first = first_line(s, source, port)
    try:
        assert first == line, "%s: expected the refusal, got %r" % (source, first)
        assert c.at_eof(), "%s: connection left open after the refusal" % source
    finally:
        c.close()


def expect_admitted(s, source):
    """An admitted SMTP session (banner read); the caller closes it."""
    c, first = first_line(s, source)
    assert first is not None and first.startswith("220 "), "%s: expected 220, got %r" % (source, first)
    return c


def refused(s, reason):
    return s.metrics().get('strata_guard_refused_total{reason="%s"}' % reason, 0)


def test_rate_refused_at_once(strata_factory):
    s = strata_factory.new(options=options(guard__mx__addr__burst="3", guard__mx__addr__rate="1"))
    before = refused(s, "rate")
    for _ in range(3):
        expect_admitted(s, "127.10.0.1").close()
    t0 = time.monotonic()
    expect_refused(s, "127.10.0.1")
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0 * SLOW, "the refusal took %.3fs" % elapsed
    assert refused(s, "rate") - before == 1
    # another address of the same network has its own bucket
    c = expect_admitted(s, "127.10.0.2")
    c.ehlo()
    c.expect("QUIT", 221)
    c.close()


def test_network_concurrency(strata_factory):
    s = strata_factory.new(options=options(guard__mx__net__concurrency="3"))
    before = refused(s, "concurrency")
    held = [expect_admitted(s, "127.20.1.%d" % i) for i in (1, 2, 3)]
    try:
        expect_refused(s, "127.20.1.4")
        assert refused(s, "concurrency") - before == 1
        # another /24 is served while this one is full
        with expect_admitted(s, "127.20.2.1") as other:
            other.ehlo()
            other.expect("QUIT", 221)
        # the held sessions still work; closing one frees its place
        for c in held:
            c.ehlo()
        held.pop().expect("QUIT", 221)

        def admitted_again():
            c, first = first_line(s, "127.20.1.4")
            c.close()
            return first is not None and first.startswith("220 ")
        deadline = time.monotonic() + 5 * SLOW
        while not admitted_again():
            assert time.monotonic() < deadline, "the released place was never given back"
            time.sleep(0.05)
    finally:
        for c in held:
            c.close()


def test_allowlisted_source_never_refused(strata_factory):
    s = strata_factory.new(options=options(guard__allow="127.0.0.1, 127.30.0.0/16",
                                           guard__mx__addr__burst="1", guard__mx__addr__rate="1",
                                           guard__mx__addr__concurrency="1",
                                           guard__mx__net__concurrency="1"))
    held = []
    try:
        for i in range(20):
            held.append(expect_admitted(s, "127.30.5.5"))
        for c in held[:3]:
            c.ehlo()
        # the same limits do bind a source outside the allowlist
        held.append(expect_admitted(s, "127.31.0.1"))
        expect_refused(s, "127.31.0.1")
    finally:
        for c in held:
            c.close()


def test_imap_refusal_line(strata_factory):
    port = free_port()
    s = strata_factory.new(options=options(imap__listen="127.0.0.1:%d" % port,
                                           guard__user__addr__burst="1", guard__user__addr__rate="1"))
    c, first = first_line(s, "127.40.0.1", port)
    try:
        assert first is not None and first.startswith("* OK"), first
    finally:
        c.close()
    expect_refused(s, "127.40.0.1", port, "* BYE Too many connections")


FLOOD_NETS = 2          # a botnet in two /24s ...
FLOOD_PER_NET = 100     # ... of 100 sources each: 200 sources
FLOOD_HOLD = 3          # connections each source tries to keep open
CAP = 200


def flood_source(net, host):
    return "127.100.%d.%d" % (net + 1, host + 1)


def test_flood_leaves_room_for_others(strata_factory):
    """200 sources in two networks try to hold 600 connections under a cap of
    200.  Without fair shares the first network alone would take the cap;
    with them each network stops at its share and a client from a third
    network still gets its message through, promptly."""
    s = strata_factory.new(populate=True, options=options(
        guard__mx__max_connections=str(CAP), guard__fair_share_above="50",
        guard__mx__addr__concurrency=str(FLOOD_HOLD), guard__mx__addr__burst="10",
        guard__mx__addr__rate="600"))
    before = refused(s, "global")
    held, n_refused = [], 0
    try:
        # phase 1: every source opens its connections and holds them (bounded: 600)
        for host in range(FLOOD_PER_NET):
            for net in range(FLOOD_NETS):
                for _ in range(FLOOD_HOLD):
                    c, first = first_line(s, flood_source(net, host))
                    if first is not None and first.startswith("220 "):
                        held.append(c)
                    else:
                        assert first in (REFUSAL, None), first
                        n_refused += 1
                        c.close()
        assert len(held) < CAP, "the flood took the whole cap (%d)" % len(held)
        assert n_refused > 0 and refused(s, "global") > before

        # phase 2: the flood keeps reconnecting (bounded count and time) while
        # a client from another network delivers a message
        stop = threading.Event()
        attempts = [0]

        def hammer():
            deadline = time.monotonic() + 20 * SLOW
            i = 0
            while not stop.is_set() and i < 3000 and time.monotonic() < deadline:
                src = flood_source(i % FLOOD_NETS, (i // FLOOD_NETS) % FLOOD_PER_NET)
                try:
                    with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=5 * SLOW,
                                                  source_address=(src, 0)) as k:
                        k.recv(512)
                except OSError:
                    pass
                i += 1
            attempts[0] = i
        t = threading.Thread(target=hammer)
        t.start()
        try:
            time.sleep(0.2)
            t0 = time.monotonic()
            with SourcedSMTP(s.smtp_port, "127.200.0.1") as good:
                banner = good.reply()
                check_reply(banner, 220, what="banner during the flood")
                t_banner = time.monotonic() - t0
                r = good.send_message("friend@remote.example", [ALICE], make_message(to=ALICE))
                qid = queued_id(r)
                latency = time.monotonic() - t0
                good.expect("QUIT", 221)
        finally:
            stop.set()
            t.join()
        print("\nflood: %d sessions held by %d sources, %d refused in phase 1, %d reconnects "
              "in phase 2; good client: banner after %.1f ms, 250 after %.1f ms"
              % (len(held), FLOOD_NETS * FLOOD_PER_NET, n_refused, attempts[0],
                 t_banner * 1000, latency * 1000))
        assert qid and latency < 5 * SLOW, "good client waited %.2fs" % latency
    finally:
        for c in held:
            c.close()


def test_guard_metrics_exported(strata_factory):
    s = strata_factory.new(options=options())
    m = s.metrics()
    for reason in ("rate", "concurrency", "global", "ban"):
        assert 'strata_guard_refused_total{reason="%s"}' % reason in m
    assert "strata_guard_evictions_total" in m
    assert "strata_guard_entries" in m
    # a bad allowlist stops start-up, naming the key
    bad = strata_factory.new(options=options(guard__allow="10.0.0.0/33"), start=False)
    with pytest.raises(StrataError) as e:
        bad.start()
    assert "guard.allow" in str(e.value)


def test_reload_changes_limits(strata_factory):
    conf = ("guard.allow = 127.0.0.1\n"
            "guard.mx.addr.burst = 1\nguard.mx.addr.rate = 1\n")
    s = strata_factory.new(config_text=conf)
    expect_admitted(s, "127.50.0.1").close()
    expect_refused(s, "127.50.0.1")
    with open(s.config_path, "w") as f:
        # one token every 0.1 ms instead of one a minute
        f.write(conf.replace("guard.mx.addr.rate = 1", "guard.mx.addr.rate = 600000"))
    s.send_signal(signal.SIGHUP)

    def admitted():
        c, first = first_line(s, "127.50.0.1")
        c.close()
        return first is not None and first.startswith("220 ")
    deadline = time.monotonic() + 10 * SLOW
    while not admitted():
        assert time.monotonic() < deadline, "the reloaded rate never took effect"
        time.sleep(0.1)


def test_user_class_shared_by_imap_and_pop3(strata_factory):
    """IMAP and POP3 count in one class; each protocol's close releases."""
    imap, pop3 = free_port(), free_port()
    s = strata_factory.new(options=options(imap__listen="127.0.0.1:%d" % imap,
                                           pop3__listen="127.0.0.1:%d" % pop3,
                                           guard__user__addr__concurrency="1"))
    src = "127.60.0.1"

    def admitted(port, greeting):
        c, first = first_line(s, src, port)
        if first is not None and first.startswith(greeting):
            return c
        c.close()
        return None

    def eventually(port, greeting):
        deadline = time.monotonic() + 5 * SLOW
        while True:
            c = admitted(port, greeting)
            if c is not None:
                return c
            assert time.monotonic() < deadline, "the released place was never given back"
            time.sleep(0.05)

    held = eventually(imap, "* OK")
    expect_refused(s, src, pop3, "-ERR [SYS/TEMP] Too many connections")
    held.close()                           # released by the IMAP session's close
    held = eventually(pop3, "+OK")
    expect_refused(s, src, imap, "* BYE Too many connections")
    held.close()                           # released by the POP3 session's close
    eventually(imap, "* OK").close()
