"""IMAP extensions against the real daemon: QUOTA (RFC 9208), CONDSTORE
(RFC 7162: MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE with [MODIFIED],
HIGHESTMODSEQ, SEARCH MODSEQ, ENABLE), QRESYNC (RFC 7162: VANISHED,
SELECT ... (QRESYNC ...), UID FETCH ... VANISHED, the expunge log written
by EXPUNGE, MOVE and POP3), ESEARCH (RFC 4731) and keywords (custom flags,
with the per-mailbox limit).

Each test uses its own account so the mailboxes' contents are known
exactly; messages are added with APPEND.  The daemon runs with
imap.listen on a free loopback port (a loopback peer may log in without
TLS)."""
import poplib
import re
import socket

import pytest

import harness
from harness import make_message

PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)
DOMAIN = "local.example"


@pytest.fixture(scope="module")
def srv(module_factory):
    port, pop3 = harness.free_port(), harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port,
                                    "pop3.listen": "127.0.0.1:%d" % pop3}, populate=True)
    s.imap_port = port
    s.pop3_port = pop3
    return s


_users = [0]


def new_user(srv, **quota):
    _users[0] += 1
    address = "ext%d@%s" % (_users[0], DOMAIN)
    srv.add_user(address, **quota)
    return address


class Raw(harness.LineClient):
    """Line-level IMAP client: exact replies, literals sent synchronously."""

    def __init__(self, srv, timeout=15):
        self.n = 0
        super().__init__(srv.imap_port, timeout)

    def cmd(self, text, expect="OK"):
        self.n += 1
        tag = "t%d" % self.n
        self.send("%s %s\r\n" % (tag, text))
        lines = self.until_tagged(tag)
        if expect is not None:
            assert lines[-1].startswith("%s %s" % (tag, expect)), (text, lines)
        return lines

    def append(self, mailbox, data, flags=""):
        self.n += 1
        tag = "t%d" % self.n
        self.send("%s APPEND %s (%s) {%d+}\r\n" % (tag, mailbox, flags, len(data)))
        self.send(data + b"\r\n")
        lines = self.until_tagged(tag)
        assert lines[-1].startswith(tag + " OK"), lines
        m = re.search(r"\[APPENDUID \d+ (\d+)\]", lines[-1])
        return int(m.group(1))


def session(srv, user):
    r = Raw(srv)
    r.cmd("LOGIN %s %s" % (user, PASSWORD))
    return r


def untagged(lines, word):
    """The untagged lines whose first word after '*' (or after a number) is word."""
    out = []
    for ln in lines:
        parts = ln.split(" ")
        if ln.startswith("* ") and (parts[1] == word or (len(parts) > 2 and parts[2] == word)):
            out.append(ln)
    return out


def modseqs(lines):
    """{uid: modseq} from FETCH responses carrying UID and MODSEQ."""
    out = {}
    for ln in untagged(lines, "FETCH"):
        u = re.search(r"UID (\d+)", ln)
        m = re.search(r"MODSEQ \((\d+)\)", ln)
        if u and m:
            out[int(u.group(1))] = int(m.group(1))
    return out


# ---- capability ------------------------------------------------------------------

def test_capabilities_after_login(srv):
    r = session(srv, new_user(srv))
    try:
        caps = untagged(r.cmd("CAPABILITY"), "CAPABILITY")[0].split()
        for c in ("CONDSTORE", "ESEARCH", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"):
            assert c in caps, (c, caps)
    finally:
        r.close()


# ---- QUOTA -----------------------------------------------------------------------

def test_quota_root_and_usage(srv):
    user = new_user(srv, quota_bytes=10 * 1024 * 1024 + 512, quota_messages=50)
    r = session(srv, user)
    try:
        data = make_message(size=3000)
        r.append("INBOX", data)
        r.append("Sent", data)
        lines = r.cmd("GETQUOTAROOT INBOX")
        assert untagged(lines, "QUOTAROOT") == ['* QUOTAROOT "INBOX" ""'], lines
        # usage rounded up to KiB, the limit rounded down
        used_kib = (2 * len(data) + 1023) // 1024
        want = '* QUOTA "" (STORAGE %d 10240 MESSAGE 2 50)' % used_kib
        assert untagged(lines, "QUOTA") == [want], lines
        lines = r.cmd('GETQUOTA ""')
        assert untagged(lines, "QUOTA") == [want], lines
        r.cmd('GETQUOTA "other"', expect="NO [NONEXISTENT]")
        r.cmd("GETQUOTAROOT NoSuchBox", expect="NO [NONEXISTENT]")
        r.cmd('SETQUOTA "" (STORAGE 1)', expect="NO [NOPERM]")
        r.cmd('SETQUOTA ""', expect="BAD")
        r.cmd("GETQUOTA", expect="BAD")
    finally:
        r.close()


def test_quota_only_messages_limit_and_unlimited(srv):
    r = session(srv, new_user(srv, quota_messages=7))
    try:
        lines = r.cmd("GETQUOTAROOT Sent")
        assert untagged(lines, "QUOTA") == ['* QUOTA "" (MESSAGE 0 7)'], lines
    finally:
        r.close()
    r = session(srv, new_user(srv))
    try:
        lines = r.cmd("GETQUOTAROOT INBOX")
        assert untagged(lines, "QUOTAROOT") == ['* QUOTAROOT "INBOX"'], lines
        assert untagged(lines, "QUOTA") == [], lines
        r.cmd('GETQUOTA ""', expect="NO [NONEXISTENT]")
    finally:
        r.close()


def test_quota_commands_need_login(srv):
    r = Raw(srv)
    try:
        r.cmd("GETQUOTAROOT INBOX", expect="BAD")
    finally:
        r.close()


def test_append_over_quota_still_overquota(srv):
    r = session(srv, new_user(srv, quota_messages=1))
    try:
        r.append("INBOX", make_message())
        data = make_message()
        r.send("o1 APPEND INBOX {%d+}\r\n" % len(data))
        r.send(data + b"\r\n")
        lines = r.until_tagged("o1")
        assert lines[-1].startswith("o1 NO [OVERQUOTA]"), lines
        lines = r.cmd("GETQUOTAROOT INBOX")
        assert untagged(lines, "QUOTA") == ['* QUOTA "" (MESSAGE 1 1)'], lines
    finally:
        r.close()


# ---- CONDSTORE -------------------------------------------------------------------

def test_enable_and_select_report_highestmodseq(srv):
    user = new_user(srv)
    r = session(srv, user)
    try:
        r.append("INBOX", make_message())
        lines = r.cmd("SELECT INBOX")
        assert not [ln for ln in lines if "HIGHESTMODSEQ" in ln], lines
        lines = r.cmd("ENABLE CONDSTORE X-UNKNOWN")
        assert untagged(lines, "ENABLED") == ["* ENABLED CONDSTORE"], lines
        lines = r.cmd("ENABLE CONDSTORE")   # already on: not named again
        assert untagged(lines, "ENABLED") == ["* ENABLED"], lines
        lines = r.cmd("SELECT INBOX")
        hms = [ln for ln in lines if "[HIGHESTMODSEQ " in ln]
        assert len(hms) == 1, lines
        h = int(re.search(r"HIGHESTMODSEQ (\d+)", hms[0]).group(1))
        lines = r.cmd("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
        assert untagged(lines, "STATUS") == ['* STATUS "INBOX" (HIGHESTMODSEQ %d MESSAGES 1)' % h], lines
    finally:
        r.close()
    r = session(srv, user)
    try:   # SELECT (CONDSTORE) enables it without ENABLE
        lines = r.cmd("EXAMINE INBOX (CONDSTORE)")
        assert [ln for ln in lines if "[HIGHESTMODSEQ " in ln], lines
        r.cmd("SELECT INBOX (BOGUS)", expect="BAD")
    finally:
        r.close()


def test_modseq_fetch_store_and_changedsince(srv):
    r = session(srv, new_user(srv))
    try:
        uids = [r.append("INBOX", make_message()) for _ in range(4)]
        r.cmd("ENABLE CONDSTORE")
        r.cmd("SELECT INBOX")
        before = modseqs(r.cmd("UID FETCH 1:* (MODSEQ)"))
        assert sorted(before) == uids and all(v > 0 for v in before.values()), before
        high = max(before.values())
        # a change takes a new modseq above every earlier one, reported with MODSEQ
        lines = r.cmd("UID STORE %d +FLAGS (\\Flagged)" % uids[1])
        changed = modseqs(lines)
        assert list(changed) == [uids[1]] and changed[uids[1]] > high, lines
        assert "\\Flagged" in untagged(lines, "FETCH")[0]
        # CHANGEDSINCE: only the changed message, MODSEQ implied
        lines = r.cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % high)
        got = modseqs(lines)
        assert got == changed, lines
        lines = r.cmd("FETCH 1:* (UID) (CHANGEDSINCE %d)" % changed[uids[1]])
        assert untagged(lines, "FETCH") == [], lines
        # .SILENT with CONDSTORE still names the new modseq, without FLAGS
        lines = r.cmd("UID STORE %d +FLAGS.SILENT (\\Seen)" % uids[2])
        f = untagged(lines, "FETCH")
        assert len(f) == 1 and "MODSEQ" in f[0] and "FLAGS" not in f[0], lines
        r.cmd("FETCH 1 (FLAGS) (CHANGEDSINCE x)", expect="BAD")
        r.cmd("FETCH 1 (FLAGS) (CHANGEDSINCE 99999999999999999999)", expect="BAD")
        r.cmd("FETCH 1 (FLAGS) (NOSUCH 1)", expect="BAD")
        # FETCH of a body sets \Seen: the FLAGS it reports come with MODSEQ
        lines = r.cmd("UID FETCH %d (BODY[TEXT])" % uids[0])
        assert re.search(r"FLAGS \((\\Recent )?\\Seen\)", lines[0]) and "MODSEQ (" in lines[0], lines
    finally:
        r.close()


def test_unchangedsince_conditional_store(srv):
    r = session(srv, new_user(srv))
    try:
        uids = [r.append("INBOX", make_message()) for _ in range(3)]
        r.cmd("SELECT INBOX")
        ms = modseqs(r.cmd("UID FETCH 1:* (MODSEQ)"))   # enables CONDSTORE
        base = max(ms.values())
        r.cmd("UID STORE %d +FLAGS (\\Answered)" % uids[1])
        # messages 1 and 3 unchanged since base: updated; 2 changed: MODIFIED
        lines = r.cmd("STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % base)
        assert lines[-1].split(" ", 1)[1].startswith("OK [MODIFIED 2]"), lines
        flagged = [ln for ln in untagged(lines, "FETCH") if "\\Flagged" in ln]
        assert sorted(int(ln.split()[1]) for ln in flagged) == [1, 3], lines
        lines = r.cmd("UID FETCH 1:* (FLAGS)")
        f = {int(re.search(r"UID (\d+)", ln).group(1)): ln for ln in untagged(lines, "FETCH")}
        assert "\\Flagged" not in f[uids[1]] and "\\Answered" in f[uids[1]], lines
        # UID STORE names UIDs; UNCHANGEDSINCE 0 fails for every message
        lines = r.cmd("UID STORE %d:%d (UNCHANGEDSINCE 0) -FLAGS (\\Flagged)" % (uids[0], uids[2]))
        assert lines[-1].split(" ", 1)[1].startswith("OK [MODIFIED %d:%d]" % (uids[0], uids[2])), lines
        r.cmd("STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)", expect="BAD")
    finally:
        r.close()


def test_other_session_change_reported_with_modseq(srv):
    user = new_user(srv)
    a, b = session(srv, user), session(srv, user)
    try:
        a.append("INBOX", make_message())
        a.cmd("ENABLE CONDSTORE")
        a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        b.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)")
        lines = a.cmd("NOOP")
        f = untagged(lines, "FETCH")
        assert len(f) == 1 and "\\Flagged" in f[0] and re.search(r"MODSEQ \(\d+\)", f[0]), lines
        # b did not enable CONDSTORE: its updates carry no MODSEQ
        a.cmd("STORE 1 -FLAGS.SILENT (\\Flagged)")
        lines = b.cmd("NOOP")
        f = untagged(lines, "FETCH")
        assert len(f) == 1 and "MODSEQ" not in f[0], lines
    finally:
        a.close()
        b.close()


def test_search_modseq(srv):
    r = session(srv, new_user(srv))
    try:
        uids = [r.append("INBOX", make_message()) for _ in range(3)]
        r.cmd("SELECT INBOX")
        lines = r.cmd("UID STORE %d +FLAGS (\\Seen)" % uids[2])
        assert "MODSEQ" not in "".join(lines), lines   # CONDSTORE not on yet
        r.cmd("ENABLE CONDSTORE")
        lines = r.cmd("UID FETCH %d (MODSEQ)" % uids[2])
        m = modseqs(lines)[uids[2]]
        lines = r.cmd("UID SEARCH MODSEQ %d" % m)
        assert untagged(lines, "SEARCH") == ["* SEARCH %d (MODSEQ %d)" % (uids[2], m)], lines
        lines = r.cmd('SEARCH MODSEQ "/flags/\\\\seen" all %d' % m)
        assert untagged(lines, "SEARCH") == ["* SEARCH 3 (MODSEQ %d)" % m], lines
        lines = r.cmd("SEARCH MODSEQ %d" % (m + 1))
        assert untagged(lines, "SEARCH") == ["* SEARCH"], lines
        r.cmd('SEARCH MODSEQ "/flags/\\\\seen" bogus 1', expect="BAD")
        r.cmd("SEARCH MODSEQ", expect="BAD")
    finally:
        r.close()


# ---- ESEARCH ---------------------------------------------------------------------

def test_esearch_return_options(srv):
    r = session(srv, new_user(srv))
    try:
        uids = [r.append("INBOX", make_message()) for _ in range(6)]
        r.cmd("SELECT INBOX")
        r.cmd("STORE 2,5 +FLAGS.SILENT (\\Seen)")
        lines = r.cmd("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
        tag = lines[-1].split(" ")[0]
        assert untagged(lines, "ESEARCH") == [
            '* ESEARCH (TAG "%s") MIN 1 MAX 6 ALL 1,3:4,6 COUNT 4' % tag], lines
        lines = r.cmd("UID SEARCH RETURN (COUNT) SEEN")
        tag = lines[-1].split(" ")[0]
        assert untagged(lines, "ESEARCH") == ['* ESEARCH (TAG "%s") UID COUNT 2' % tag], lines
        lines = r.cmd("UID SEARCH RETURN () ALL")
        tag = lines[-1].split(" ")[0]
        assert untagged(lines, "ESEARCH") == [
            '* ESEARCH (TAG "%s") UID ALL %d:%d' % (tag, uids[0], uids[-1])], lines
        # no match: MIN/MAX/ALL left out, COUNT 0
        lines = r.cmd("SEARCH RETURN (MIN MAX ALL COUNT) DELETED")
        tag = lines[-1].split(" ")[0]
        assert untagged(lines, "ESEARCH") == ['* ESEARCH (TAG "%s") COUNT 0' % tag], lines
        # body searches (a pool job) answer the same way
        lines = r.cmd("SEARCH RETURN (COUNT) BODY Hello")
        assert untagged(lines, "ESEARCH")[0].endswith("COUNT 6"), lines
        lines = r.cmd("SEARCH RETURN (MIN) CHARSET UTF-8 ALL")
        assert untagged(lines, "ESEARCH")[0].endswith("MIN 1"), lines
        r.cmd("SEARCH RETURN (BOGUS) ALL", expect="BAD")
        r.cmd("SEARCH RETURN ALL", expect="BAD")
        # classic SEARCH unchanged
        assert untagged(r.cmd("SEARCH SEEN"), "SEARCH") == ["* SEARCH 2 5"]
    finally:
        r.close()


# ---- keywords --------------------------------------------------------------------

def flags_of(lines):
    """{seq: set of flags} from untagged FETCH responses with FLAGS."""
    out = {}
    for ln in untagged(lines, "FETCH"):
        m = re.search(r"FLAGS \(([^)]*)\)", ln)
        if m:
            out[int(ln.split()[1])] = set(m.group(1).split()) - {"\\Recent"}   # per-session, not stored
    return out


def test_keywords_store_fetch_search(srv):
    user = new_user(srv)
    r = session(srv, user)
    try:
        for _ in range(3):
            r.append("INBOX", make_message())
        lines = r.cmd("SELECT INBOX")
        assert "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)" in lines, lines
        perm = [ln for ln in lines if "PERMANENTFLAGS" in ln][0]
        assert "\\*" in perm, lines
        # a new keyword: FLAGS is announced again before the FETCH
        lines = r.cmd("STORE 1:2 +FLAGS ($Forwarded Junk)")
        assert lines[0].startswith("* FLAGS (") and "$Forwarded" in lines[0] and "Junk" in lines[0], lines
        assert flags_of(lines) == {1: {"$Forwarded", "Junk"}, 2: {"$Forwarded", "Junk"}}, lines
        # case-insensitive: "junk" is the mailbox's "Junk"; no new FLAGS
        lines = r.cmd("STORE 3 +FLAGS (junk \\Seen $MDNSent)")
        assert flags_of(lines) == {3: {"\\Seen", "$MDNSent", "Junk"}}, lines
        lines = r.cmd("STORE 2 -FLAGS (JUNK)")
        assert flags_of(lines) == {2: {"$Forwarded"}}, lines
        lines = r.cmd("FETCH 1:3 (FLAGS)")
        assert flags_of(lines) == {1: {"$Forwarded", "Junk"}, 2: {"$Forwarded"},
                                   3: {"\\Seen", "$MDNSent", "Junk"}}, lines
        assert untagged(r.cmd("SEARCH KEYWORD junk"), "SEARCH") == ["* SEARCH 1 3"]
        assert untagged(r.cmd("SEARCH UNKEYWORD $Forwarded"), "SEARCH") == ["* SEARCH 3"]
        assert untagged(r.cmd("SEARCH KEYWORD NonJunk"), "SEARCH") == ["* SEARCH"]
        assert untagged(r.cmd("SEARCH KEYWORD $MDNSent SEEN"), "SEARCH") == ["* SEARCH 3"]
        # FLAGS replaces keywords too
        lines = r.cmd("STORE 1 FLAGS (NonJunk)")
        assert flags_of(lines)[1] == {"NonJunk"}, lines
        for bad in ("STORE 1 +FLAGS (a]b)", "STORE 1 +FLAGS (\\Bogus)", "STORE 1 +FLAGS (%s)" % ("k" * 65),
                    "SEARCH KEYWORD", 'STORE 1 +FLAGS ("quoted")'):
            r.cmd(bad, expect="BAD")
    finally:
        r.close()
    # kept across sessions, listed at SELECT; APPEND and COPY carry keywords
    r = session(srv, user)
    try:
        lines = r.cmd("SELECT INBOX")
        fl = [ln for ln in lines if ln.startswith("* FLAGS")][0]
        for k in ("$Forwarded", "Junk", "$MDNSent", "NonJunk"):
            assert k in fl, lines
        r.append("Archive", make_message(), flags="\\Seen Work")
        r.cmd("COPY 3 Archive")
        lines = r.cmd("SELECT Archive")
        assert flags_of(r.cmd("FETCH 1:2 (FLAGS)")) == {1: {"\\Seen", "Work"},
                                                         2: {"\\Seen", "$MDNSent", "Junk"}}
    finally:
        r.close()


def test_keyword_change_seen_by_other_session(srv):
    user = new_user(srv)
    a, b = session(srv, user), session(srv, user)
    try:
        a.append("INBOX", make_message())
        a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        b.cmd("STORE 1 +FLAGS.SILENT ($label1)")
        lines = a.cmd("NOOP")
        assert lines[0].startswith("* FLAGS (") and "$label1" in lines[0], lines
        assert flags_of(lines) == {1: {"$label1"}}, lines
    finally:
        a.close()
        b.close()


def test_keyword_limit_per_mailbox(srv):
    r = session(srv, new_user(srv))
    try:
        r.append("INBOX", make_message())
        r.cmd("SELECT INBOX")
        words = ["kw%03d" % i for i in range(128)]
        for i in range(0, 128, 32):
            r.cmd("STORE 1 +FLAGS.SILENT (%s)" % " ".join(words[i:i + 32]))
        lines = r.cmd("STORE 1 +FLAGS (one-too-many)", expect="NO [LIMIT]")
        # nothing was written; a keyword already there is still accepted (in
        # the mailbox's spelling); a freed slot takes a new one
        lines = r.cmd("STORE 1 FLAGS (%s)" % " ".join(w.upper() for w in words))
        assert flags_of(lines)[1] == set(words), lines
        r.cmd("STORE 1 -FLAGS (kw000)")
        lines = r.cmd("STORE 1 +FLAGS (one-more)")
        assert "one-more" in flags_of(lines)[1] and "kw000" not in flags_of(lines)[1], lines
        data = make_message()
        r.send("x1 APPEND INBOX (brand-new) {%d+}\r\n" % len(data))
        r.send(data + b"\r\n")
        assert r.until_tagged("x1")[-1].startswith("x1 NO [LIMIT]")
        lines = r.cmd("SELECT INBOX")
        perm = [ln for ln in lines if "PERMANENTFLAGS" in ln][0]
        assert "\\*" not in perm and "kw127" in perm and "one-more" in perm, perm
        assert untagged(lines, "EXISTS") == ["* 1 EXISTS"], lines
    finally:
        r.close()


# ---- QRESYNC ---------------------------------------------------------------------

def highestmodseq(lines):
    for ln in lines:
        m = re.search(r"HIGHESTMODSEQ (\d+)", ln)
        if m:
            return int(m.group(1))
    raise AssertionError("no HIGHESTMODSEQ in %r" % lines)


def uidvalidity(lines):
    for ln in lines:
        m = re.search(r"\[UIDVALIDITY (\d+)\]", ln)
        if m:
            return int(m.group(1))
    raise AssertionError("no UIDVALIDITY in %r" % lines)


def qresync_session(srv, user):
    r = session(srv, user)
    assert untagged(r.cmd("ENABLE QRESYNC"), "ENABLED") == ["* ENABLED CONDSTORE QRESYNC"]
    return r


def test_qresync_vanished_and_resync(srv):
    user = new_user(srv)
    r = qresync_session(srv, user)
    try:
        uids = [r.append("INBOX", make_message()) for _ in range(6)]
        lines = r.cmd("SELECT INBOX")
        uv, h0 = uidvalidity(lines), highestmodseq(lines)
        # expunges are reported as VANISHED, never EXPUNGE
        r.cmd("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uids[1])
        lines = r.cmd("EXPUNGE")
        assert untagged(lines, "VANISHED") == ["* VANISHED %d" % uids[1]], lines
        assert not untagged(lines, "EXPUNGE"), lines
        h1 = highestmodseq(r.cmd("STATUS INBOX (HIGHESTMODSEQ)"))
        r.cmd("UID STORE %d,%d +FLAGS.SILENT (\\Deleted)" % (uids[3], uids[4]))
        lines = r.cmd("UID EXPUNGE %d:%d" % (uids[3], uids[4]))
        assert untagged(lines, "VANISHED") == ["* VANISHED %d:%d" % (uids[3], uids[4])], lines
        r.cmd("UID STORE %d +FLAGS.SILENT (\\Flagged)" % uids[5])
    finally:
        r.close()
    r = qresync_session(srv, user)
    try:
        # since h0: every expunge, and the flag change
        lines = r.cmd("SELECT INBOX (QRESYNC (%d %d))" % (uv, h0))
        v = untagged(lines, "VANISHED")
        assert v == ["* VANISHED (EARLIER) %d,%d:%d" % (uids[1], uids[3], uids[4])], lines
        changed = modseqs(lines)
        assert uids[5] in changed and "\\Flagged" in [ln for ln in untagged(lines, "FETCH")
                                                       if "UID %d " % uids[5] in ln][0], lines
        assert lines.index(v[0]) < len(lines) - 1 and lines[-1].split()[1] == "OK", lines
        # since h1 from the log: only the later expunges; known-uids narrows it
        lines = r.cmd("EXAMINE INBOX (QRESYNC (%d %d))" % (uv, h1))
        assert untagged(lines, "VANISHED") == ["* VANISHED (EARLIER) %d:%d" % (uids[3], uids[4])], lines
        lines = r.cmd("EXAMINE INBOX (QRESYNC (%d %d %d:%d (1:2 %d:%d)))"
                      % (uv, h0, uids[0], uids[3], uids[0], uids[1]))
        assert untagged(lines, "VANISHED") == ["* VANISHED (EARLIER) %d,%d" % (uids[1], uids[3])], lines
        # before the log began: every known UID that is gone (the RFC's fallback)
        lines = r.cmd("EXAMINE INBOX (QRESYNC (%d 0))" % uv)
        assert untagged(lines, "VANISHED") == [
            "* VANISHED (EARLIER) %d,%d:%d" % (uids[1], uids[3], uids[4])], lines
        # another UIDVALIDITY: a plain select
        lines = r.cmd("EXAMINE INBOX (QRESYNC (%d %d))" % (uv + 1, h0))
        assert not untagged(lines, "VANISHED") and not untagged(lines, "FETCH"), lines
        # UID FETCH ... (CHANGEDSINCE n VANISHED)
        lines = r.cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % h0)
        assert untagged(lines, "VANISHED") == [
            "* VANISHED (EARLIER) %d,%d:%d" % (uids[1], uids[3], uids[4])], lines
        assert lines[0].startswith("* VANISHED"), lines
        assert list(modseqs(lines)) == [uids[5]], lines
        lines = r.cmd("UID FETCH %d:%d (FLAGS) (VANISHED CHANGEDSINCE %d)" % (uids[0], uids[2], h0))
        assert untagged(lines, "VANISHED") == ["* VANISHED (EARLIER) %d" % uids[1]], lines
        for bad in ("FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % h0,
                    "UID FETCH 1:* (FLAGS) (VANISHED)",
                    "SELECT INBOX (QRESYNC (0 1))", "SELECT INBOX (QRESYNC (%d))" % uv,
                    "SELECT INBOX (QRESYNC (%d 1 1:x))" % uv, "SELECT INBOX (QRESYNC (%d 1 1 (1)))" % uv):
            r.cmd(bad, expect="BAD")
    finally:
        r.close()


def test_qresync_needs_enable(srv):
    r = session(srv, new_user(srv))
    try:
        lines = r.cmd("SELECT INBOX")
        r.cmd("SELECT INBOX (QRESYNC (%d 1))" % uidvalidity(lines), expect="BAD")
    finally:
        r.close()


def test_qresync_move_and_pop3_are_logged(srv):
    user = new_user(srv)
    r = qresync_session(srv, user)
    try:
        uids = [r.append("INBOX", make_message()) for _ in range(4)]
        lines = r.cmd("SELECT INBOX")
        uv, h0 = uidvalidity(lines), highestmodseq(lines)
        lines = r.cmd("UID MOVE %d Archive" % uids[0])
        assert untagged(lines, "VANISHED") == ["* VANISHED %d" % uids[0]], lines
        r.cmd("UNSELECT")
    finally:
        r.close()
    p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=30)
    try:
        p.user(user)
        p.pass_(PASSWORD)
        p.dele(2)    # the second remaining message: uids[2]
        p.quit()
    finally:
        p.close()
    r = qresync_session(srv, user)
    try:
        lines = r.cmd("SELECT INBOX (QRESYNC (%d %d))" % (uv, h0))
        assert untagged(lines, "VANISHED") == ["* VANISHED (EARLIER) %d,%d" % (uids[0], uids[2])], lines
        assert untagged(lines, "EXISTS") == ["* 2 EXISTS"], lines
    finally:
        r.close()


def test_qresync_other_session_expunge(srv):
    user = new_user(srv)
    a, b = qresync_session(srv, user), session(srv, user)
    try:
        uids = [a.append("INBOX", make_message()) for _ in range(3)]
        a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        b.cmd("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        lines = b.cmd("EXPUNGE")
        assert untagged(lines, "EXPUNGE") == ["* 1 EXPUNGE", "* 2 EXPUNGE"], lines
        lines = a.cmd("NOOP")
        assert untagged(lines, "VANISHED") == ["* VANISHED %d,%d" % (uids[0], uids[2])], lines
        assert not untagged(lines, "EXPUNGE"), lines
        lines = a.cmd("FETCH 1 (UID)")
        assert "UID %d" % uids[1] in untagged(lines, "FETCH")[0], lines
    finally:
        a.close()
        b.close()


# ---- LIST-EXTENDED, LIST-STATUS --------------------------------------------------

def list_names(lines):
    """{name: line} of the untagged LIST replies."""
    out = {}
    for ln in untagged(lines, "LIST"):
        m = re.match(r'\* LIST \(([^)]*)\) "/" "([^"]*)"', ln)
        assert m, ln
        out[m.group(2)] = ln
    return out


def test_list_extended_selection_and_return(srv):
    r = session(srv, new_user(srv))
    try:
        for name in ("Projects", "Projects/A", "Projects/B"):
            r.cmd("CREATE %s" % name)
        r.cmd("UNSUBSCRIBE Projects")
        r.cmd("UNSUBSCRIBE Projects/B")
        got = list_names(r.cmd('LIST (SUBSCRIBED) "" "*"'))
        assert "Projects" not in got and "Projects/B" not in got, got
        assert "Projects/A" in got and "\\Subscribed" in got["Projects/A"], got
        assert "\\Subscribed" in got["INBOX"], got
        # RECURSIVEMATCH: the unsubscribed parent of a subscribed child
        got = list_names(r.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'))
        assert got["Projects"].endswith('"Projects" ("CHILDINFO" ("SUBSCRIBED"))'), got
        assert "\\Subscribed" not in got["Projects"] and "Projects/A" not in got, got
        # RETURN (SUBSCRIBED CHILDREN): everything, subscription marked
        got = list_names(r.cmd('LIST "" "*" RETURN (SUBSCRIBED CHILDREN)'))
        assert "\\Subscribed" not in got["Projects/B"] and "\\Subscribed" in got["Projects/A"], got
        assert "\\HasChildren" in got["Projects"], got
        # SPECIAL-USE selection (RFC 6154)
        got = list_names(r.cmd('LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)'))
        assert sorted(got) == ["Archive", "Drafts", "Junk", "Sent", "Trash"], got
        assert "\\Sent" in got["Sent"], got
        # several patterns
        got = list_names(r.cmd('LIST "" ("inbox" "Projects/%")'))
        assert sorted(got) == ["INBOX", "Projects/A", "Projects/B"], got
        for bad in ('LIST (RECURSIVEMATCH) "" "*"', 'LIST (BOGUS) "" "*"', 'LIST "" "*" RETURN (BOGUS)',
                    'LIST "" "*" RETURN (STATUS (BOGUS))', 'LIST "" "*" RETURN', 'LIST "" ()'):
            r.cmd(bad, expect="BAD")
    finally:
        r.close()


def test_list_status(srv):
    r = session(srv, new_user(srv))
    try:
        r.append("INBOX", make_message())
        r.append("INBOX", make_message(), flags="\\Seen")
        r.append("Sent", make_message(), flags="\\Seen")
        lines = r.cmd('LIST "" "%" RETURN (STATUS (MESSAGES UNSEEN))')
        status = untagged(lines, "STATUS")
        assert '* STATUS "INBOX" (MESSAGES 2 UNSEEN 1)' in status, lines
        assert '* STATUS "Sent" (MESSAGES 1 UNSEEN 0)' in status, lines
        assert len(status) == len(untagged(lines, "LIST")), lines
        # each STATUS follows its LIST line
        i = lines.index('* STATUS "INBOX" (MESSAGES 2 UNSEEN 1)')
        assert lines[i - 1].endswith('"INBOX"'), lines
    finally:
        r.close()
