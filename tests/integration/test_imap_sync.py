"""How a selected IMAP session learns about changes (imap_mailbox_sync):
only what changed since the view's (uidnext, modseq) is read, so these
tests pin down that nothing is missed and nothing is reported twice:
flag changes by another session (exactly the changed messages, final
flags), expunges (the mailbox's first, and later ones), EXPUNGE numbering mixed with flag changes and new
mail in one sync, QRESYNC's VANISHED, a session's own STOREs (one FETCH
each, no echo at the next NOOP), and imap.flag_fsync in both settings
(flag changes survive a clean restart either way)."""
import re

import pytest

import harness
from harness import make_message

PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port}, populate=True)
    s.imap_port = port
    return s


class Raw(harness.LineClient):
    def __init__(self, srv, timeout=10):
        super().__init__(srv.imap_port, timeout)
        self.n = 0

    def cmd(self, text):
        self.n += 1
        tag = "t%d" % self.n
        self.send("%s %s\r\n" % (tag, text))
        lines = self.until_tagged(tag)
        assert lines[-1].startswith(tag + " OK"), (text, lines)
        return lines[:-1]


def mailbox(srv, user, n):
    """A fresh account with n messages; returns a logged-in client that
    has selected its INBOX."""
    srv.add_user(user)
    for i in range(n):
        srv.deliver([user], make_message(to=user, subject="sync %d" % (i + 1)))
    c = Raw(srv)
    c.cmd("LOGIN %s %s" % (user, PASSWORD))
    lines = c.cmd("SELECT INBOX")
    assert "* %d EXISTS" % n in lines, lines
    return c


def fetches(lines):
    """{seq: text} of the untagged FETCH responses."""
    out = {}
    for ln in lines:
        m = re.match(r"\* (\d+) FETCH \((.*)\)$", ln)
        if m:
            assert int(m.group(1)) not in out, ("reported twice", lines)
            out[int(m.group(1))] = m.group(2)
    return out


def test_flag_changes_of_another_session_exactly_once(srv):
    user = "sync-flags@local.example"
    a = mailbox(srv, user, 30)
    b = Raw(srv)
    try:
        b.cmd("LOGIN %s %s" % (user, PASSWORD))
        b.cmd("SELECT INBOX")
        b.cmd("STORE 3 +FLAGS (\\Flagged)")
        b.cmd("STORE 17 +FLAGS (\\Answered $Work)")
        b.cmd("STORE 3 -FLAGS (\\Flagged)")
        b.cmd("STORE 3 +FLAGS (\\Draft)")
        got = fetches(a.cmd("NOOP"))
        assert sorted(got) == [3, 17], got
        assert "\\Draft" in got[3] and "\\Flagged" not in got[3], got
        assert "\\Answered" in got[17] and "$Work" in got[17], got
        assert fetches(a.cmd("NOOP")) == {}, "reported again"
        # and the view holds the new flags
        lines = a.cmd("FETCH 17 (FLAGS)")
        assert "$Work" in lines[0], lines
    finally:
        a.close()
        b.close()


SYNC_CASES = [
    # (label, first expunge in the mailbox's life: nothing logged before)
    ("first expunge of the mailbox", True),
    ("expunge log reaches back", False),
]


@pytest.mark.parametrize("label,fresh", SYNC_CASES, ids=[c[0] for c in SYNC_CASES])
def test_expunge_flags_and_new_mail_in_one_sync(srv, label, fresh):
    user = "sync-mix-%d@local.example" % fresh
    a = mailbox(srv, user, 10)
    b = Raw(srv)
    try:
        b.cmd("LOGIN %s %s" % (user, PASSWORD))
        b.cmd("SELECT INBOX")
        if not fresh:
            b.cmd("STORE 10 +FLAGS (\\Deleted)")
            b.cmd("EXPUNGE")
            assert "* 10 EXPUNGE" in a.cmd("NOOP")
        # expunge messages 2 and 4, flag message 5, deliver one more
        b.cmd("STORE 2,4 +FLAGS (\\Deleted)")
        b.cmd("EXPUNGE")
        b.cmd("STORE 3 +FLAGS (\\Flagged)")   # message 5 of a's view
        srv.deliver([user], make_message(to=user, subject="late"))
        lines = a.cmd("NOOP")
        exp = [ln for ln in lines if ln.endswith(" EXPUNGE")]
        # each number valid when sent: 2 goes, then the old 4 is 3
        assert exp == ["* 2 EXPUNGE", "* 3 EXPUNGE"], (label, lines)
        got = fetches(lines)
        assert list(got) == [3] and "\\Flagged" in got[3], (label, lines)
        total = 9 if not fresh else 10
        assert "* %d EXISTS" % (total - 2 + 1) in lines, (label, lines)
        assert lines.index(exp[-1]) < [i for i, ln in enumerate(lines) if " FETCH " in ln][0], lines
        b.cmd("NOOP")   # b learns of the new message too
        uids_a = a.cmd("UID SEARCH ALL")[0].split()[2:]
        uids_b = b.cmd("UID SEARCH ALL")[-1].split()[2:]
        assert uids_a == uids_b, (label, uids_a, uids_b)
    finally:
        a.close()
        b.close()


def test_qresync_vanished_then_fetch_with_modseq(srv):
    user = "sync-qr@local.example"
    srv.add_user(user)
    for i in range(6):
        srv.deliver([user], make_message(to=user))
    a, b = Raw(srv), Raw(srv)
    try:
        for c in (a, b):
            c.cmd("LOGIN %s %s" % (user, PASSWORD))
        a.cmd("ENABLE QRESYNC")
        a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        uids = b.cmd("UID SEARCH ALL")[0].split()[2:]
        b.cmd("UID STORE %s +FLAGS (\\Deleted)" % uids[1])
        b.cmd("UID EXPUNGE %s" % uids[1])
        b.cmd("UID STORE %s +FLAGS (\\Seen)" % uids[4])
        lines = a.cmd("NOOP")
        assert lines[0] == "* VANISHED %s" % uids[1], lines
        got = fetches(lines)
        assert list(got) == [4], lines       # uids[4] is now the 4th message
        assert "UID %s" % uids[4] in got[4] and "\\Seen" in got[4] and "MODSEQ (" in got[4], got
        assert not any("EXPUNGE" in ln for ln in lines), lines
    finally:
        a.close()
        b.close()


VANISHED_KEEP = 10000   # STORE_VANISHED_KEEP (src/store/store.h): log rows kept per mailbox


def test_pruned_expunge_log_falls_back_to_a_full_reload(srv):
    """More expunges than the log keeps since a session last looked: the log
    no longer reaches back to its modseq, so its sync counts the mailbox,
    finds the difference and reloads the view whole (sync_full), reporting
    every expunge once, with numbers valid when sent."""
    user = "sync-pruned@local.example"
    n, gone = VANISHED_KEEP + 5, VANISHED_KEEP + 1
    srv.add_user(user)
    a, b = Raw(srv, timeout=120), Raw(srv, timeout=120)
    try:
        b.cmd("LOGIN %s %s" % (user, PASSWORD))
        # MULTIAPPEND with LITERAL+, 60 messages a command (IMAP_MAX_LITERALS is 64)
        for first in range(0, n, 60):
            parts = []
            for i in range(first, min(n, first + 60)):
                m = b"From: a@remote.example\r\nSubject: pruned %d\r\n\r\nbody\r\n" % i
                parts.append(b"{%d+}\r\n" % len(m) + m)
            b.n += 1
            b.send(b"t%d APPEND INBOX " % b.n + b" ".join(parts) + b"\r\n")
            reply = b.until_tagged("t%d" % b.n)[-1]
            assert reply.startswith("t%d OK" % b.n), reply
        a.cmd("LOGIN %s %s" % (user, PASSWORD))
        assert "* %d EXISTS" % n in a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        keep_uids = b.cmd("UID SEARCH %d:*" % (gone + 1))[0].split()[2:]
        assert len(keep_uids) == n - gone
        b.cmd("STORE 1:%d +FLAGS.SILENT (\\Deleted)" % gone)
        b.cmd("EXPUNGE")
        # the log holds no row as old as a's view any more
        floor = srv.query("SELECT f.modseq FROM vanished_floor f JOIN mailboxes m ON m.id = f.mailbox_id"
                          " JOIN accounts a ON a.id = m.account_id WHERE a.address = ?", (user,))
        assert floor and floor[0][0] > 1, floor
        lines = a.cmd("NOOP")
        exp = [ln for ln in lines if ln.endswith(" EXPUNGE")]
        # expunging 1..gone in order: each is message 1 when it is sent
        assert exp == ["* 1 EXPUNGE"] * gone, (len(exp), exp[:3], exp[-3:])
        got = a.cmd("UID FETCH 1:* (UID)")
        assert [re.search(r"UID (\d+)", ln).group(1) for ln in got] == keep_uids, got
        assert a.cmd("NOOP") == [], "reported again"
    finally:
        a.close()
        b.close()


def test_own_store_one_fetch_each_and_no_echo(srv):
    user = "sync-own@local.example"
    a = mailbox(srv, user, 40)
    try:
        a.cmd("ENABLE CONDSTORE")
        last = 0
        for seq in range(1, 41):
            lines = a.cmd("STORE %d +FLAGS (\\Flagged)" % seq)
            got = fetches(lines)
            assert list(got) == [seq] and "\\Flagged" in got[seq], lines
            modseq = int(re.search(r"MODSEQ \((\d+)\)", got[seq]).group(1))
            assert modseq > last, (last, lines)
            last = modseq
            assert fetches(a.cmd("NOOP")) == {}, "own change echoed at %d" % seq
        lines = a.cmd("SEARCH FLAGGED")
        assert lines[0] == "* SEARCH " + " ".join(str(i) for i in range(1, 41)), lines
    finally:
        a.close()


FSYNC_CASES = [("flag_fsync=no (default)", None), ("flag_fsync=yes", "yes")]


@pytest.mark.parametrize("label,value", FSYNC_CASES, ids=[c[0] for c in FSYNC_CASES])
def test_flag_changes_survive_a_restart(module_factory, label, value):
    port = harness.free_port()
    opts = {"imap.listen": "127.0.0.1:%d" % port}
    if value is not None:
        opts["imap.flag_fsync"] = value
    s = module_factory.new(options=opts, populate=True)
    s.imap_port = port
    user = "alice@local.example"
    for _ in range(3):
        s.deliver([user], make_message(to=user))
    c = Raw(s)
    c.cmd("LOGIN %s %s" % (user, PASSWORD))
    c.cmd("SELECT INBOX")
    c.cmd("STORE 1:3 +FLAGS (\\Answered)")
    c.cmd("STORE 2 +FLAGS ($Later)")
    c.close()
    s.restart()
    c = Raw(s)
    try:
        c.cmd("LOGIN %s %s" % (user, PASSWORD))
        c.cmd("SELECT INBOX")
        got = fetches(c.cmd("FETCH 1:3 (FLAGS)"))
        assert sorted(got) == [1, 2, 3], (label, got)
        assert all("\\Answered" in v for v in got.values()), (label, got)
        assert "$Later" in got[2], (label, got)
    finally:
        c.close()
