"""Protocol offences reported to the connection guard (src/guard).

An SMTP client that passes a protocol limit - too many errors, too many
unknown recipients (directory harvest), too many commands before HELO/EHLO,
too many commands in one session - gets a 421 and a close, and its address
a temporary ban that grows with each repeat (guard.offence_bans).  Bans
apply at accept, so the next connection from that address gets the guard's
one-line refusal.

Every client binds its own 127.A.B.C source; 127.0.0.1 stays allowlisted so
that the harness's readiness probes never count.
"""
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

from harness import SLOW, check_reply, free_port, make_message, wait_until
from test_guard import HOST, REFUSAL, SourcedSMTP, expect_admitted, expect_refused, options

LOCAL = "local.example"


def offences(s, kind):
    return s.metrics().get('strata_guard_offences_total{kind="%s"}' % kind, 0)


def closed_with(c, text):
    """Reads the 421 that ends the session, then expects EOF."""
    r = c.reply()
    check_reply(r, 421, "4.7.0", what="offence reply")
    assert r.text == "4.7.0 %s Error: %s" % (HOST, text), "unexpected 421 text %r" % r.text
    assert c.at_eof(), "connection left open after the 421"


def offend_with_errors(s, source):
    """smtp.max_errors (2 in these tests) junk commands from source."""
    c = SourcedSMTP(s.smtp_port, source)
    try:
        check_reply(c.reply(), 220, what="banner")
        check_reply(c.cmd("EHLO client.example"), 250)
        check_reply(c.cmd("JUNK one"), 500)
        c.send(b"JUNK two\r\n")
        r = c.reply()
        check_reply(r, 500, what="second error")
        closed_with(c, "too many errors")
    finally:
        c.close()


def test_error_offence_bans_and_grows_on_repeat(strata_factory):
    s = strata_factory.new(options=options(smtp__max_errors="2", guard__offence_bans="2s,5s"))
    src = "127.21.0.1"
    before = offences(s, "errors")
    offend_with_errors(s, src)
    assert offences(s, "errors") == before + 1
    t_ban = time.monotonic()
    expect_refused(s, src)
    expect_admitted(s, "127.21.0.2").close()     # another address is not affected
    # First ban: 2 s.
    wait_until(lambda: time.monotonic() - t_ban > 2.3, 5 * SLOW, what="first ban to expire")
    offend_with_errors(s, src)
    t_ban = time.monotonic()
    # Second offence: 5 s, so still refused well after 2 s.
    time.sleep(2.5)
    expect_refused(s, src)
    wait_until(lambda: time.monotonic() - t_ban > 5.3, 10 * SLOW, what="second ban to expire")
    expect_admitted(s, src).close()
    assert "guard: too many errors from %s: banned for 5s (offence 2)" % src in s.read_log()


def test_directory_harvest(strata_factory):
    s = strata_factory.new(options=options(smtp__max_unknown_recipients="3"), populate=True)
    src = "127.21.1.1"
    before = offences(s, "harvest")
    c = SourcedSMTP(s.smtp_port, src)
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO harvester.example"), 250)
        check_reply(c.cmd("MAIL FROM:<x@remote.example>"), 250)
        check_reply(c.cmd("RCPT TO:<alice@%s>" % LOCAL), 250, what="a real user")
        for i in range(2):
            check_reply(c.cmd("RCPT TO:<nobody%d@%s>" % (i, LOCAL)), 550, what="unknown %d" % i)
        check_reply(c.cmd("RCPT TO:<nobody9@%s>" % LOCAL), 550, what="third unknown")
        closed_with(c, "too many unknown recipients")
    finally:
        c.close()
    assert offences(s, "harvest") == before + 1
    expect_refused(s, src)


def test_commands_before_helo(strata_factory):
    s = strata_factory.new(options=options(smtp__max_commands_before_helo="2"))
    src = "127.21.2.1"
    c = SourcedSMTP(s.smtp_port, src)
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("NOOP"), 250)
        check_reply(c.cmd("MAIL FROM:<x@remote.example>"), 503)
        c.send(b"NOOP\r\n")
        closed_with(c, "too many commands before HELO/EHLO")
    finally:
        c.close()
    expect_refused(s, src)
    # A client that greets first may send as many as it likes (below smtp.max_commands).
    c = SourcedSMTP(s.smtp_port, "127.21.2.2")
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO good.example"), 250)
        for _ in range(10):
            check_reply(c.cmd("NOOP"), 250)
        check_reply(c.cmd("QUIT"), 221)
    finally:
        c.close()


def test_too_many_commands(strata_factory):
    s = strata_factory.new(options=options(smtp__max_commands="10"))
    src = "127.21.3.1"
    before = offences(s, "commands")
    c = SourcedSMTP(s.smtp_port, src)
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO busy.example"), 250)
        for _ in range(9):
            check_reply(c.cmd("NOOP"), 250)
        c.send(b"NOOP\r\n")
        closed_with(c, "too many commands")
    finally:
        c.close()
    assert offences(s, "commands") == before + 1
    expect_refused(s, src)


def test_accepted_messages_restart_the_command_count(strata_factory):
    # A relay that keeps one connection for many messages sends far more
    # than smtp.max_commands in total: only the commands since the last
    # accepted message count.
    s = strata_factory.new(options=options(smtp__max_commands="10"), populate=True)
    src = "127.21.3.2"
    before = offences(s, "commands")
    c = SourcedSMTP(s.smtp_port, src)
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO relay.example"), 250)
        for i in range(6):   # 6 x (MAIL, RCPT, DATA, body, RSET, NOOP): 30 commands
            check_reply(c.cmd("MAIL FROM:<x@remote.example>"), 250)
            check_reply(c.cmd("RCPT TO:<alice@%s>" % LOCAL), 250)
            check_reply(c.cmd("DATA"), 354)
            c.send(make_message(subject="kept %d" % i, to="alice@%s" % LOCAL) + b".\r\n")
            check_reply(c.reply(), 250, "2.0.0", what="message %d" % i)
            check_reply(c.cmd("RSET"), 250)
            check_reply(c.cmd("NOOP"), 250)
        # 2 commands since the last 250; 8 more are allowed, the 9th is not.
        for _ in range(8):
            check_reply(c.cmd("NOOP"), 250)
        c.send(b"NOOP\r\n")
        closed_with(c, "too many commands")
    finally:
        c.close()
    assert offences(s, "commands") == before + 1


def test_allowlisted_offender_not_banned(strata_factory):
    o = options(smtp__max_errors="2")
    o["guard.allow"] = "127.0.0.1, 127.21.4.0/24"
    s = strata_factory.new(options=o)
    before = offences(s, "errors")
    offend_with_errors(s, "127.21.4.7")
    assert offences(s, "errors") == before + 1
    expect_admitted(s, "127.21.4.7").close()
    assert s.metrics().get("strata_guard_offence_bans_total", 0) == 0


# ---- early talkers ---------------------------------------------------------------

def banner_after(s, source, timeout=10):
    """Seconds until the banner reaches a patient client from source."""
    t0 = time.monotonic()
    c = SourcedSMTP(s.smtp_port, source, timeout=timeout)
    try:
        check_reply(c.reply(), 220, what="banner for %s" % source)
        return time.monotonic() - t0
    finally:
        c.close()


def test_early_talker_refused_and_banned(strata_factory):
    # 5 of 10 mx connections held: the banner waits half of 4 s.
    s = strata_factory.new(options=options(guard__mx__max_connections="10", guard__smtp__banner_delay="4s"))
    assert banner_after(s, "127.22.0.100") < 0.5, "an idle server delays the banner"
    holders = [SourcedSMTP(s.smtp_port, "127.22.0.%d" % (i + 1)) for i in range(5)]
    try:
        wait_until(lambda: s.metrics().get("strata_smtp_sessions_active", 0) >= 5, 5 * SLOW,
                   what="5 sessions open")
        waited = banner_after(s, "127.22.1.2")
        assert 1.5 <= waited < 3.5, "banner after %.2f s, expected about 2 s at half load" % waited
        before = offences(s, "early_talk")
        talker = SourcedSMTP(s.smtp_port, "127.22.1.1")
        try:
            talker.send(b"EHLO spam.example\r\nMAIL FROM:<x@spam.example>\r\n")
            r = talker.reply()
            check_reply(r, 554, "5.5.0", what="early talker")
            assert r.text == "5.5.0 %s Error: spoke before the banner" % HOST, r.text
            assert talker.at_eof(), "early talker left connected"
        finally:
            talker.close()
        assert offences(s, "early_talk") == before + 1
        expect_refused(s, "127.22.1.1")
    finally:
        for h in holders:
            h.close()
    assert "guard: spoke before the banner from 127.22.1.1: banned for 60s (offence 1)" in s.read_log()


def test_allowlisted_client_gets_banner_at_once(strata_factory):
    o = options(guard__mx__max_connections="4", guard__smtp__banner_delay="4s")
    o["guard.allow"] = "127.0.0.1, 127.22.5.5"
    s = strata_factory.new(options=o)
    holders = [SourcedSMTP(s.smtp_port, "127.22.4.%d" % (i + 1)) for i in range(3)]
    try:
        wait_until(lambda: s.metrics().get("strata_smtp_sessions_active", 0) >= 3, 5 * SLOW,
                   what="3 sessions open")
        assert banner_after(s, "127.22.5.5") < 0.5, "allowlisted client waited for its banner"
    finally:
        for h in holders:
            h.close()


# ---- slow clients and session lifetime ------------------------------------------

SLOW_OPTS = {"smtp.min_rate": "100", "smtp.min_rate_window": "1s"}


def read_cut(c, text, within):
    """Waits (at most `within` seconds) for the 421 4.4.2 that cuts c."""
    t0 = time.monotonic()
    r = c.reply()
    waited = time.monotonic() - t0
    check_reply(r, 421, "4.4.2", what="cut")
    assert r.text == "4.4.2 %s Error: %s" % (HOST, text), r.text
    assert waited <= within, "cut after %.1f s, expected within %.1f s" % (waited, within)
    assert c.at_eof(), "connection left open after the cut"
    return waited


def dribble(c, data, interval, stop):
    """Sends data one byte every `interval` s until the server closes or `stop` s pass."""
    deadline = time.monotonic() + stop
    for b in data:
        if time.monotonic() > deadline:
            return
        try:
            c.sock.sendall(bytes([b]))
        except OSError:
            return
        time.sleep(interval)


def test_slowloris_command_line_cut(strata_factory):
    o = options()
    o.update(SLOW_OPTS)
    s = strata_factory.new(options=o)
    c = SourcedSMTP(s.smtp_port, "127.23.0.1")
    try:
        check_reply(c.reply(), 220)
        c.send(b"EH")
        waiter = time.monotonic()
        # 2 bytes a second is far below 100 bytes per 1 s window.
        t = threading.Thread(target=dribble, args=(c, b"LO slow.example", 0.5, 5), daemon=True)
        t.start()
        read_cut(c, "too slow", 4 * SLOW)
        t.join(10)
        assert time.monotonic() - waiter >= 0.9, "cut before a whole window passed"
    finally:
        c.close()
    assert s.metrics().get('strata_smtp_cut_total{reason="slow"}', 0) == 1
    # Idle between commands is not slow: only smtp.timeout.command applies.
    c = SourcedSMTP(s.smtp_port, "127.23.0.2")
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO patient.example"), 250)
        time.sleep(2.5)
        check_reply(c.cmd("NOOP"), 250)
        check_reply(c.cmd("QUIT"), 221)
    finally:
        c.close()


def test_slowloris_data_cut(strata_factory):
    o = options()
    o.update(SLOW_OPTS)
    s = strata_factory.new(options=o, populate=True)
    c = SourcedSMTP(s.smtp_port, "127.23.1.1")
    try:
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO slow.example"), 250)
        check_reply(c.cmd("MAIL FROM:<x@remote.example>"), 250)
        check_reply(c.cmd("RCPT TO:<alice@%s>" % LOCAL), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: slow\r\n\r\n")
        t = threading.Thread(target=dribble, args=(c, b"x" * 40, 0.2, 6), daemon=True)
        t.start()
        read_cut(c, "too slow", 4 * SLOW)
        t.join(10)
    finally:
        c.close()
    # A normal delivery at full speed is not affected.
    c = SourcedSMTP(s.smtp_port, "127.23.1.2")
    try:
        check_reply(c.reply(), 220)
        r = c.send_message("x@remote.example", ["alice@%s" % LOCAL], b"Subject: fast\r\n\r\n" + b"y" * 4000 + b"\r\n")
        check_reply(r, 250)
    finally:
        c.close()


def test_session_lifetime_cap(strata_factory):
    o = options()
    o.update({"smtp.max_session_time": "10s", "smtp.min_rate_window": "1s"})
    s = strata_factory.new(options=o)
    c = SourcedSMTP(s.smtp_port, "127.23.2.1", timeout=20)
    try:
        t0 = time.monotonic()
        check_reply(c.reply(), 220)
        check_reply(c.cmd("EHLO long.example"), 250)
        while time.monotonic() - t0 < 8:
            check_reply(c.cmd("NOOP"), 250)
            time.sleep(1)
        r = c.reply()
        check_reply(r, 421, "4.4.2", what="lifetime cap")
        assert r.text == "4.4.2 %s Error: session too long" % HOST, r.text
        lasted = time.monotonic() - t0
        assert 9.5 <= lasted <= 13 * SLOW, "cut after %.1f s, cap 10 s" % lasted
    finally:
        c.close()
    assert s.metrics().get('strata_smtp_cut_total{reason="lifetime"}', 0) == 1


# ---- memory per idle connection ------------------------------------------------

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_memory_per_idle_connection(strata_factory):
    """2,000 idle SMTP sessions from distinct 127.x sources (allowlisted, so
    no limit applies); the daemon's RSS grows by a few KiB each."""
    n = 2000
    o = options(smtp__max_connections="5000")
    o["guard.allow"] = "127.0.0.0/8"
    s = strata_factory.new(options=o)
    held = []
    try:
        # Warm up: the first sessions fault in per-thread pools.
        for i in range(50):
            held.append(SourcedSMTP(s.smtp_port, "127.24.200.%d" % (i + 1)))
        for c in held:
            check_reply(c.reply(), 220)
        time.sleep(0.3)
        base = rss_kib(s.pid)
        for i in range(n):
            c = SourcedSMTP(s.smtp_port, "127.25.%d.%d" % (i // 250, i % 250 + 1))
            held.append(c)
        for c in held[50:]:
            check_reply(c.reply(), 220)
        wait_until(lambda: s.metrics().get("strata_smtp_sessions_active", 0) >= n + 50, 10 * SLOW,
                   what="all sessions open")
        per_conn = (rss_kib(s.pid) - base) * 1024 / n
        print("idle SMTP session: %.0f bytes of RSS each over %d sessions" % (per_conn, n))
        assert per_conn < 16384, "%.0f bytes per idle session" % per_conn
    finally:
        for c in held:
            c.close()


# ---- strata guard: status, ban, unban, allow ---------------------------------------

def guard_status(s):
    code, body = s.http_get("/guard/status")
    assert code == 200, (code, body)
    return json.loads(body)


def test_cli_ban_and_unban_at_once(strata_factory):
    s = strata_factory.new(options=options())
    src = "127.26.0.1"
    expect_admitted(s, src).close()
    out = s.cli("guard", "ban", src, "2h").stdout
    assert "banned %s for 7200s" % src in out, out
    expect_refused(s, src)
    bans = guard_status(s)["bans"]
    assert [b["address"] for b in bans] == [src], bans
    assert 7100 < bans[0]["expires_in"] <= 7200, bans
    s.cli("guard", "unban", src)
    expect_admitted(s, src).close()        # at once: no wait, no reload
    m = s.metrics()
    assert m.get('strata_guard_admin_total{action="ban"}') == 1, m
    assert m.get('strata_guard_admin_total{action="unban"}') == 1, m
    r = s.cli("guard", "unban", src, rc=1)
    assert "was not banned" in r.stderr, r.stderr
    # An offender's growing ban is lifted the same way, and its record forgotten.
    s2 = strata_factory.new(options=options(smtp__max_errors="2"))
    offend_with_errors(s2, "127.26.0.2")
    expect_refused(s2, "127.26.0.2")
    s2.cli("guard", "unban", "127.26.0.2")
    expect_admitted(s2, "127.26.0.2").close()
    assert guard_status(s2)["top_offenders"] == []


def test_cli_allow_beats_ban_and_persists(strata_factory):
    s = strata_factory.new(options=options())
    banned, net = "127.26.1.1", "127.26.1.0/24"
    s.cli("guard", "ban", banned)
    expect_refused(s, banned)
    out = s.cli("guard", "allow", net).stdout
    assert "allowed %s" % net in out, out
    expect_admitted(s, banned).close()     # the allowlist wins over the ban
    r = s.cli("guard", "allow", "not-an-address", rc=1)
    assert "not an address" in r.stderr, r.stderr
    s.cli("guard", "ban", "127.26.2.2", "1h")
    st = guard_status(s)
    assert net in st["allowed_at_run_time"], st
    # Both survive a restart (saved at once, and at shutdown).
    s.restart()
    expect_admitted(s, banned).close()
    expect_refused(s, "127.26.2.2")
    st = guard_status(s)
    assert net in st["allowed_at_run_time"], st
    assert "127.26.2.2" in [b["address"] for b in st["bans"]], st
    assert "guard: restored" in s.read_log()


def test_guard_status_report(strata_factory):
    s = strata_factory.new(options=options(smtp__max_errors="2"))
    held = [SourcedSMTP(s.smtp_port, "127.26.3.1") for _ in range(3)]
    try:
        for c in held:
            check_reply(c.reply(), 220)
        offend_with_errors(s, "127.26.3.9")
        expect_refused(s, "127.26.3.9")
        st = guard_status(s)
        mx = st["classes"]["mx"]
        assert {"address": "127.26.3.1", "connections": 3} in mx["top_sources"], mx
        assert mx["connections"] >= 3 and mx["max_connections"] == 2000, mx
        assert st["refused"]["ban"] >= 1 and st["offences"]["errors"] == 1, st
        assert st["top_offenders"] == [{"address": "127.26.3.9", "offences": 1}], st
        text = s.cli("guard", "status").stdout
        for want in ("budgets:", "127.26.3.1", "3 connections", "bans: 1", "127.26.3.9", "1 offences"):
            assert want in text, "%r not in:\n%s" % (want, text)
    finally:
        for c in held:
            c.close()
    # Changes are POST only, with the header a browser cannot forge cross-origin.
    code, _ = s.http_get("/guard/ban")
    assert code == 405
    url = "http://127.0.0.1:%d/guard/ban" % s.admin_port
    for headers, want in (({}, 403), ({"X-Strata-Guard": "1"}, 200)):
        req = urllib.request.Request(url, data=b"address=127.26.3.50", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5 * SLOW) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        assert code == want, (headers, code)
    expect_refused(s, "127.26.3.50")
    s.stop()
    r = s.cli("guard", "status", rc=3)
    assert "does not answer" in r.stderr, r.stderr


# ---- brute force on IMAP and POP3 ----------------------------------------------

PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)
ALICE = "alice@%s" % LOCAL
AUTH_OPTS = {"guard.auth.delay": "200ms", "guard.auth.max_delay": "3s", "guard.auth.ban_after": "4"}


class Line:
    """A line-oriented client from a chosen source (IMAP or POP3)."""

    def __init__(self, port, source):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW,
                                             source_address=(source, 0))
        self.f = self.sock.makefile("rb")

    def line(self):
        return self.f.readline().decode()

    def cmd(self, text):
        """Sends text, returns (the last line, seconds until it came)."""
        t0 = time.monotonic()
        self.sock.sendall(text.encode() + b"\r\n")
        line = self.line()
        return line, time.monotonic() - t0

    def close(self):
        self.f.close()
        self.sock.close()


def test_imap_brute_force_delays_then_ban(strata_factory):
    port = free_port()
    o = options(imap__listen="127.0.0.1:%d" % port, imap__max_errors="20")
    o.update(AUTH_OPTS)
    s = strata_factory.new(options=o, populate=True)
    attacker = Line(port, "127.27.0.1")
    try:
        assert attacker.line().startswith("* OK")
        waits = []
        for i in range(4):
            reply, waited = attacker.cmd('a%d LOGIN %s "wrong-%d"' % (i, ALICE, i))
            assert reply.startswith("a%d NO [AUTHENTICATIONFAILED]" % i), reply
            waits.append(waited)
        # 200 ms, 400 ms, 800 ms, 1.6 s: each at least its share, and growing.
        for i, w in enumerate(waits):
            assert w >= 0.2 * 2 ** i * 0.9, "failure %d answered after %.2f s: %s" % (i + 1, w, waits)
        # The real user, from another address, gets in at once: the account is
        # under attack, but a successful login is never delayed or refused.
        user = Line(port, "127.27.9.9")
        try:
            assert user.line().startswith("* OK")
            reply, waited = user.cmd('u1 LOGIN %s "%s"' % (ALICE, PASSWORD))
            while reply.startswith("* "):
                reply = user.line()
            assert reply.startswith("u1 OK"), reply
            assert waited < 0.5 * SLOW, "the real user waited %.2f s" % waited
        finally:
            user.close()
    finally:
        attacker.close()
    # The 4th failure banned the source: its next connection is refused.
    expect_refused(s, "127.27.0.1", port, "* BYE Too many connections")
    m = s.metrics()
    assert m.get('strata_guard_offences_total{kind="auth"}') == 1, m
    assert m.get("strata_guard_auth_failures_total") == 4, m
    assert "guard: too many failed logins from 127.27.0.1: banned for 60s (offence 1)" in s.read_log()


def test_pop3_brute_force_delays(strata_factory):
    port = free_port()
    o = options(pop3__listen="127.0.0.1:%d" % port)
    o.update(AUTH_OPTS)
    s = strata_factory.new(options=o, populate=True)
    c = Line(port, "127.27.1.1")
    try:
        assert c.line().startswith("+OK")
        waits = []
        for i in range(3):
            reply, _ = c.cmd("USER %s" % ALICE)
            assert reply.startswith("+OK"), reply
            reply, waited = c.cmd("PASS wrong-%d" % i)
            assert reply.startswith("-ERR [AUTH]"), reply
            waits.append(waited)
        assert waits[0] >= 0.18 and waits[1] >= 0.36 and waits[2] >= 0.72, waits
    finally:
        c.close()
    good = Line(port, "127.27.1.2")
    try:
        assert good.line().startswith("+OK")
        good.cmd("USER %s" % ALICE)
        reply, waited = good.cmd("PASS %s" % PASSWORD)
        assert reply.startswith("+OK"), reply
        assert waited < 0.5 * SLOW, "the real user waited %.2f s" % waited
    finally:
        good.close()
    assert s.metrics().get("strata_guard_auth_delayed_total") == 3


def test_shutdown_during_brute_force_delay(strata_factory):
    """A failed login waiting for its delay does not hold up or break a stop."""
    imap, pop3 = free_port(), free_port()
    o = options(imap__listen="127.0.0.1:%d" % imap, pop3__listen="127.0.0.1:%d" % pop3)
    o.update({"guard.auth.delay": "5s", "guard.auth.max_delay": "5s"})
    s = strata_factory.new(options=o, populate=True)
    a, p = Line(imap, "127.27.2.1"), Line(pop3, "127.27.2.2")
    try:
        assert a.line().startswith("* OK") and p.line().startswith("+OK")
        a.sock.sendall(b'a1 LOGIN alice@local.example "wrong"\r\n')
        p.sock.sendall(b"USER alice@local.example\r\nPASS wrong\r\n")
        wait_until(lambda: s.metrics().get("strata_guard_auth_delayed_total", 0) == 2, 5 * SLOW,
                   what="both failures waiting")
        t0 = time.monotonic()
        s.stop()
        assert time.monotonic() - t0 < 15 * SLOW
    finally:
        a.close()
        p.close()
    s.check_log()


# ---- PROXY protocol ---------------------------------------------------------------

BALANCER, STRANGER = "127.28.0.1", "127.28.0.2"
V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_tcp4(src, dst, sport, dport):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return V2SIG + b"\x21\x11" + len(body).to_bytes(2, "big") + body


def proxied(s, header, source=BALANCER, port=None):
    c = SourcedSMTP(port or s.smtp_port, source)
    c.send(header)
    return c


def deliver_through(c, subject):
    check_reply(c.reply(), 220, what="banner through the balancer")
    r = c.send_message("far@remote.example", [ALICE], b"Subject: %s\r\n\r\nhello\r\n" % subject.encode())
    check_reply(r, 250)
    c.expect("QUIT", 221)


def received_of(s, subject):
    for uid in s.mail_uids(ALICE):
        msg = s.mail_cat(ALICE, uid)
        if b"Subject: " + subject.encode() in msg:
            return msg.split(b"\r\n\r\n", 1)[0].decode()
    raise AssertionError("no message %r" % subject)


def test_proxy_v1_and_v2_from_the_balancer(strata_factory):
    imap = free_port()
    o = options(imap__listen="127.0.0.1:%d" % imap)
    o.update({"guard.mx.proxy_from": BALANCER, "guard.user.proxy_from": BALANCER + ", 127.28.1.0/24"})
    s = strata_factory.new(options=o, populate=True)
    c = proxied(s, b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 25\r\n")
    try:
        deliver_through(c, "via v1")
    finally:
        c.close()
    c = proxied(s, proxy_v2_tcp4("198.51.100.9", "127.0.0.1", 40002, 25))
    try:
        deliver_through(c, "via v2")
    finally:
        c.close()
    assert "[203.0.113.7]" in received_of(s, "via v1")
    assert "[198.51.100.9]" in received_of(s, "via v2")
    log = s.read_log()
    assert "client=[203.0.113.7]:40001" in log and "client=[198.51.100.9]:40002" in log, s.log_tail(30)
    # Every limit applies to the real client: a banned client behind the
    # balancer is refused, the balancer itself is not.
    s.cli("guard", "ban", "203.0.113.66")
    c = proxied(s, b"PROXY TCP4 203.0.113.66 127.0.0.1 40003 25\r\n")
    try:
        assert c.read_line().decode() == REFUSAL
        assert c.at_eof()
    finally:
        c.close()
    c = proxied(s, b"PROXY TCP4 203.0.113.8 127.0.0.1 40004 25\r\n")
    try:
        check_reply(c.reply(), 220)
    finally:
        c.close()
    # LOCAL (a health check) keeps the balancer's own address; IMAP too.
    c = proxied(s, V2SIG + b"\x20\x00\x00\x00", source="127.28.1.5", port=imap)
    try:
        assert c.read_line().decode().startswith("* OK")
    finally:
        c.close()
    m = s.metrics()
    assert m.get('strata_guard_proxy_total{result="accepted"}') == 5, m


def test_proxy_refused_from_others_and_when_malformed(strata_factory):
    imap, pop3 = free_port(), free_port()
    o = options(imap__listen="127.0.0.1:%d" % imap, pop3__listen="127.0.0.1:%d" % pop3)
    o.update({"guard.mx.proxy_from": BALANCER, "guard.user.proxy_from": BALANCER, "guard.proxy_timeout": "1s"})
    s = strata_factory.new(options=o)
    for port, greeting, refusal in ((imap, "* OK", "* BYE PROXY protocol not accepted from your address"),
                                    (pop3, "+OK", "-ERR PROXY protocol not accepted from your address")):
        c = proxied(s, b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 143\r\n", source=STRANGER, port=port)
        try:
            assert c.read_line().decode().startswith(greeting)
            assert c.read_line().decode() == refusal
            assert c.at_eof()
        finally:
            c.close()
    # From an address not in guard.mx.proxy_from, a PROXY header is a protocol error.
    c = proxied(s, b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 25\r\n", source=STRANGER)
    try:
        check_reply(c.reply(), 220)
        r = c.reply()
        check_reply(r, 421, "4.7.0")
        assert "PROXY protocol not accepted" in r.text, r.text
        assert c.at_eof()
    finally:
        c.close()
    # From the balancer: a malformed header, or none in time, closes without a word.
    for header in (b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 25\r\n", b"EHLO direct\r\n",
                   V2SIG + b"\x21\x11\xff\xff"):
        c = proxied(s, header)
        try:
            assert c.at_eof(), "kept open after %r" % header
        finally:
            c.close()
    c = SourcedSMTP(s.smtp_port, BALANCER)
    try:
        t0 = time.monotonic()
        assert c.read_line() is None, "a banner without a PROXY header"
        waited = time.monotonic() - t0
        assert 0.8 <= waited <= 3 * SLOW, "closed after %.1f s, deadline 1 s" % waited
    finally:
        c.close()
    assert s.metrics().get('strata_guard_proxy_total{result="refused"}') == 4


# ---- good senders (src/guard/guard_good.c) --------------------------------------


def make_good(s, source):
    """A clean delivery from source: the guard remembers it as a good sender."""
    c = SourcedSMTP(s.smtp_port, source)
    try:
        check_reply(c.reply(), 220, what="banner for %s" % source)
        data = make_message(to=ALICE)
        check_reply(c.send_message("sender@remote.example", [ALICE], data), 250, what="DATA")
        check_reply(c.cmd("QUIT"), 221)
    finally:
        c.close()


def good_count(s):
    return guard_status(s)["good_senders"]["count"]


def hold(s, sources):
    """One admitted (banner read) session from each source."""
    held = []
    for src in sources:
        held.append(expect_admitted(s, src))
    return held


def test_good_sender_gets_the_reserve_and_survives_restart(strata_factory):
    # cap 5, 40 % reserved for good senders: others stop at 3.
    o = options(guard__mx__max_connections="5", guard__good__reserve="40", guard__fair_share_above="100")
    s = strata_factory.new(options=o, populate=True)
    good = "127.40.0.1"
    assert good_count(s) == 0
    make_good(s, good)
    wait_until(lambda: good_count(s) == 1, 5 * SLOW, what="the good sender to be remembered")

    def at_the_cap():
        held = hold(s, ["127.41.0.1", "127.41.1.1", "127.41.2.1"])
        try:
            expect_refused(s, "127.42.0.1")              # the pool of 3 is full for others
            held += hold(s, [good, good])                # the reserve is the good sender's
            expect_refused(s, good)                      # ... up to the cap of 5
            expect_refused(s, "127.42.0.2")
        finally:
            for c in held:
                c.close()
        wait_until(lambda: guard_status(s)["classes"]["mx"]["connections"] == 0, 5 * SLOW,
                   what="the sessions to close")

    at_the_cap()
    s.restart()                                          # saved at shutdown, read at start
    assert good_count(s) == 1
    assert "1 good senders read" in s.read_log()
    at_the_cap()


def test_good_sender_skips_the_banner_delay(strata_factory):
    # 5 of 10 held: others wait half of 20 s for the banner; a good sender none.
    o = options(guard__mx__max_connections="10", guard__smtp__banner_delay="20s", guard__good__reserve="20")
    s = strata_factory.new(options=o, populate=True)
    make_good(s, "127.43.0.1")                           # idle server: no delay yet
    holders = [SourcedSMTP(s.smtp_port, "127.43.1.%d" % (i + 1)) for i in range(5)]
    try:
        wait_until(lambda: s.metrics().get("strata_smtp_sessions_active", 0) >= 5, 5 * SLOW,
                   what="5 sessions open")
        assert banner_after(s, "127.43.0.1", timeout=10 * SLOW) < 3 * SLOW, "the good sender waited"
        other = SourcedSMTP(s.smtp_port, "127.43.2.1", timeout=3)
        try:
            try:
                line = other.read_line()
            except socket.timeout:
                line = None
            assert line is None, "a sender with no history got its banner at once: %r" % line
        finally:
            other.close()
    finally:
        for h in holders:
            h.close()


def test_offence_forgets_the_good_sender(strata_factory):
    s = strata_factory.new(options=options(smtp__max_errors="2"), populate=True)
    src = "127.44.0.1"
    make_good(s, src)
    assert good_count(s) == 1
    offend_with_errors(s, src)
    assert good_count(s) == 0
    expect_refused(s, src)
    s.cli("guard", "unban", src)
    # Remembered again only after a new clean delivery.
    expect_admitted(s, src).close()
    assert good_count(s) == 0
    make_good(s, src)
    assert good_count(s) == 1


def test_pop3_login_makes_a_good_sender(strata_factory):
    port = free_port()
    s = strata_factory.new(options=options(pop3__listen="127.0.0.1:%d" % port), populate=True)
    bad = Line(port, "127.45.0.2")
    try:
        assert bad.line().startswith("+OK")
        bad.cmd("USER %s" % ALICE)
        reply, _ = bad.cmd("PASS wrong")
        assert reply.startswith("-ERR"), reply
    finally:
        bad.close()
    assert good_count(s) == 0, "a failed login made a good sender"
    c = Line(port, "127.45.0.1")
    try:
        assert c.line().startswith("+OK")
        c.cmd("USER %s" % ALICE)
        reply, _ = c.cmd("PASS %s" % PASSWORD)
        assert reply.startswith("+OK"), reply
    finally:
        c.close()
    wait_until(lambda: good_count(s) == 1, 5 * SLOW, what="the POP3 user's address to be remembered")


def test_good_senders_bounded(strata_factory):
    """A state file with more good senders than room: the table keeps at
    most its capacity, whatever the file says."""
    s = strata_factory.new(options=options(guard__good__entries="1024"), start=False)
    os.makedirs(s.state_dir, exist_ok=True)
    now_ms = int(time.time() * 1000)
    with open(os.path.join(s.state_dir, "guard-good"), "w") as f:
        f.write("# written by the test\n")
        for i in range(5000):
            f.write("10.%d.%d.%d %d\n" % (i >> 16, (i >> 8) & 255, i & 255, now_ms - 1000))
        f.write("10.255.255.255 %d\n" % (now_ms - 8 * 86400 * 1000))   # past the 7-day ttl
        f.write("garbage line\n")
    s.start()
    st = guard_status(s)["good_senders"]
    assert st["capacity"] == 1024, st
    assert 0 < st["count"] <= 1024, st
    assert "ignoring a line that does not parse" in s.read_log()
    s.restart()
    assert 0 < guard_status(s)["good_senders"]["count"] <= 1024
