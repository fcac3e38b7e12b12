"""Limits: SIZE, quotas (temporary and permanent replies), recipients."""
import pytest

from conftest import populate_standard
from harness import SLOW, dot_stuff, make_message, queued_id, split_received, wait_until

ALICE, BOB = "alice@local.example", "bob@local.example"
MAX_SIZE = 100 * 1024


@pytest.fixture(scope="module")
def srv(module_factory):
    return module_factory.new(options={"smtp.max_message_size": "100k", "smtp.max_recipients": "5"},
                              populate=True)


def state_snapshot(s):
    return (s.query("SELECT COUNT(*) FROM messages")[0][0], set(s.blob_files()))


def test_size_advertised(srv):
    with srv.smtp() as c:
        r = c.ehlo()
        assert "SIZE %d" % MAX_SIZE in r.lines, r


def test_declared_size_over_limit(srv):
    with srv.smtp() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<big@remote.example> SIZE=%d" % (MAX_SIZE + 1))
        assert r.code == 552 and r.enhanced == "5.3.4", r
        # an absurd SIZE is the same refusal, not an overflow
        r = c.cmd("MAIL FROM:<big@remote.example> SIZE=99999999999999999999999999")
        assert r.code in (552, 501), r
        c.expect("MAIL FROM:<big@remote.example> SIZE=%d" % MAX_SIZE, 250)
        c.expect("QUIT", 221)


def test_actual_size_over_limit(srv):
    before = state_snapshot(srv)
    msg = make_message(to=ALICE, size=MAX_SIZE + 4096)
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<big@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        r = c.reply()
        assert r.code == 552 and r.enhanced == "5.3.4", r
        # the session is still usable and a message within the limit goes through
        small = make_message(to=ALICE, size=MAX_SIZE // 2)
        qid = queued_id(c.send_message("ok@remote.example", [ALICE], small, ehlo=False))
        c.expect("QUIT", 221)
    after = state_snapshot(srv)
    assert after[0] == before[0] + 1
    assert after[1] - before[1] == {srv.blob_path(qid)}
    assert srv.tmp_files() == []


def test_oversize_bdat(srv):
    before = state_snapshot(srv)
    chunk = b"x" * 60000 + b"\r\n"
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<big@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        assert c.reply().code == 250
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        assert r.code == 552 and r.enhanced == "5.3.4", r
        c.expect("NOOP", 250)
        c.expect("QUIT", 221)
    assert state_snapshot(srv) == before


def test_too_many_recipients(srv):
    before = len(srv.mail_uids(ALICE))
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<many@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        for i in range(4):
            c.expect("RCPT TO:<alice+%d@local.example>" % i, 250)
        r = c.cmd("RCPT TO:<%s>" % BOB)
        assert r.code == 452 and r.enhanced == "4.5.3", r
        c.expect("DATA", 354)
        c.send(make_message(to=ALICE) + b".\r\n")
        queued_id(c.reply())
        c.expect("QUIT", 221)
    assert len(srv.mail_uids(ALICE)) == before + 1


def fill_until_refused(s, address, msg_size, limit=20):
    """Sends messages until one is refused; returns (accepted, refusal reply)."""
    accepted = 0
    for _ in range(limit):
        with s.smtp() as c:
            c.ehlo()
            c.expect("MAIL FROM:<q@remote.example>", 250)
            r = c.cmd("RCPT TO:<%s>" % address)
            if r.code != 250:
                return accepted, r
            c.expect("DATA", 354)
            c.send(dot_stuff(make_message(to=address, size=msg_size)) + b".\r\n")
            r = c.reply()
            if r.code != 250:
                return accepted, r
            queued_id(r)
            accepted += 1
            c.expect("QUIT", 221)
    raise AssertionError("%d messages of %d bytes accepted, quota never reached" % (accepted, msg_size))


def used(s, address):
    """Bytes stored for an account; the account's usage counters agree."""
    total, count = s.query("SELECT COALESCE(SUM(b.size), 0), COUNT(*) FROM messages m "
                           "JOIN mailboxes x ON m.mailbox_id = x.id JOIN accounts a ON x.account_id = a.id "
                           "JOIN blobs b ON m.blob_id = b.id WHERE a.address = ?", (address,))[0]
    counters = s.query("SELECT used_bytes, used_messages FROM accounts WHERE address = ?", (address,))[0]
    assert counters == (total, count), (counters, total, count)
    return total


@pytest.mark.parametrize("reply,code,enhanced", [("temporary", 452, "4.2.2"), ("permanent", 552, "5.2.2")])
def test_quota(strata_factory, reply, code, enhanced):
    s = strata_factory.new(options={"quota.over_quota_reply": reply})
    populate_standard(s)
    s.add_user("small@local.example", quota_bytes=10240)
    accepted, r = fill_until_refused(s, "small@local.example", 3000)
    assert r.code == code and r.enhanced == enhanced, r
    assert accepted == 3, accepted             # 3 x ~3.2 KB fit in 10 KB, a 4th does not
    assert used(s, "small@local.example") <= 10240
    assert len(s.mail_uids("small@local.example")) == 3
    # a declared SIZE that does not fit is refused at RCPT already
    with s.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<q@remote.example> SIZE=5000", 250)
        r = c.cmd("RCPT TO:<small@local.example>")
        assert r.code == code and r.enhanced == enhanced, r
        # other recipients are unaffected
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("QUIT", 221)
    # a message-count quota
    s.add_user("few@local.example", quota_messages=2)
    accepted, r = fill_until_refused(s, "few@local.example", 500)
    assert accepted == 2 and r.code == code and r.enhanced == enhanced, (accepted, r)
    # raising the quota lets mail in again
    s.cli("user", "quota", "few@local.example", "0", "3")
    s.deliver(["few@local.example"])
    assert len(s.mail_uids("few@local.example")) == 3


def test_quota_for_one_of_several_recipients(strata_factory):
    """The full mailbox refuses; the others in the same message still get it."""
    s = strata_factory.new()
    populate_standard(s)
    s.add_user("tiny@local.example", quota_messages=1)
    s.deliver(["tiny@local.example"])
    qid, msg = None, make_message(to=ALICE)
    with s.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<q@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        r = c.cmd("RCPT TO:<tiny@local.example>")
        assert r.code == 452 and r.enhanced == "4.2.2", r
        c.expect("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        qid = queued_id(c.reply())
        c.expect("QUIT", 221)
    assert len(s.mail_uids("tiny@local.example")) == 1
    raw = s.mail_cat(ALICE, max(s.mail_uids(ALICE)))
    assert split_received(raw)[1] == msg and qid in split_received(raw)[0]


def test_connection_limit(strata_factory):
    s = strata_factory.new(options={"smtp.max_connections": "3"})
    before = s.metrics()
    held = [s.smtp() for _ in range(3)]
    with s.smtp(banner=False) as extra:
        r = extra.reply_or_eof()
        assert r is not None and r.code == 421, r
        assert extra.at_eof()
    after = s.metrics()
    key = 'strata_smtp_rejected_total{reason="connection_limit"}'
    assert after[key] - before[key] == 1
    assert after["strata_smtp_sessions_active"] == 3
    # the held sessions still work, and a freed slot is usable again
    for c in held:
        c.ehlo()
    held.pop().expect("QUIT", 221)

    def admitted():
        with s.smtp(banner=False) as c:
            r = c.reply_or_eof()
            return r is not None and r.code == 220
    wait_until(admitted, 5 * SLOW, what="a session after one was freed")
    for c in held:
        c.expect("QUIT", 221)
        c.close()
