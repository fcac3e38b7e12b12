"""IMAP4rev1 against the real daemon: login, LIST, SELECT, FETCH of a
message delivered by SMTP (byte-identical to its blob), flags seen across
two sessions, COPY/MOVE/EXPUNGE with UIDPLUS codes and blob references,
APPEND (a 50 MB literal with bounded server memory), SEARCH, IDLE woken by
an SMTP delivery, UIDs stable across a restart, and malformed input that
gets BAD/NO while the server keeps working.

The daemon runs with imap.listen on a free loopback port (a loopback
peer may log in without TLS)."""
import imaplib
import re
import socket
import ssl
import time

import pytest

import harness
from harness import make_message

imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))

ALICE, BOB = "alice@local.example", "bob@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port}, populate=True)
    s.imap_port = port
    return s


def connect(srv):
    return imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30)


def login(srv, user=ALICE):
    m = connect(srv)
    m.login(user, PASSWORD)
    return m


def ok(resp):
    typ, data = resp
    assert typ == "OK", (typ, data)
    return data


class Raw(harness.LineClient):
    """Line-level IMAP client for exact replies and hostile input."""

    def __init__(self, srv, timeout=10):
        super().__init__(srv.imap_port, timeout)

    def cmd(self, tag, text):
        self.send("%s %s\r\n" % (tag, text))
        return self.until_tagged(tag)

    def login(self, user=ALICE):
        r = self.cmd("L1", "LOGIN %s %s" % (user, PASSWORD))
        assert r[-1].startswith("L1 OK"), r


def tagged(lines):
    return lines[-1].split(" ", 2)[1]


def deliver(srv, to=ALICE, **kw):
    data = make_message(to=to, **kw)
    qid, data = srv.deliver([to], data)
    return qid, data


def flat(data):
    """The text parts of a FETCH reply, literals left out."""
    return b"".join(x if isinstance(x, bytes) else x[0] for x in data if x is not None)


def select_uids(m, mailbox="INBOX"):
    ok(m.select(mailbox))
    data = ok(m.uid("SEARCH", None, "ALL"))
    return [int(x) for x in data[0].split()]


# ---- login and listing ----------------------------------------------------------------

def test_greeting_capability_and_login(srv):
    r = Raw(srv)
    try:
        assert r.greeting.startswith("* OK [CAPABILITY IMAP4rev1 ")
        assert "AUTH=PLAIN" in r.greeting and "LOGINDISABLED" not in r.greeting  # loopback
        lines = r.cmd("a", "LOGIN %s wrong-pw" % ALICE)
        assert lines[-1].startswith("a NO [AUTHENTICATIONFAILED]"), lines
        lines = r.cmd("b", "LOGIN nobody@local.example %s" % PASSWORD)
        assert lines[-1].startswith("b NO [AUTHENTICATIONFAILED]"), lines
        lines = r.cmd("c", "LOGIN %s %s" % (ALICE, PASSWORD))
        assert lines[-1].startswith("c OK [CAPABILITY IMAP4rev1 "), lines
        assert "UIDPLUS" in lines[-1] and "MOVE" in lines[-1] and "IDLE" in lines[-1]
        lines = r.cmd("d", "LOGIN %s %s" % (ALICE, PASSWORD))
        assert lines[-1].startswith("d BAD"), lines
        lines = r.cmd("e", "LOGOUT")
        assert lines[0].startswith("* BYE") and lines[-1].startswith("e OK"), lines
    finally:
        r.close()


def test_authenticate_plain_sasl_ir_and_continuation(srv):
    import base64
    token = base64.b64encode(("\0%s\0%s" % (BOB, PASSWORD)).encode()).decode()
    r = Raw(srv)
    try:
        assert r.cmd("a", "AUTHENTICATE PLAIN %s" % token)[-1].startswith("a OK"), "SASL-IR"
    finally:
        r.close()
    r = Raw(srv)
    try:
        r.send("b AUTHENTICATE PLAIN\r\n")
        assert r.line() == "+ "
        r.send(token + "\r\n")
        assert r.until_tagged("b")[-1].startswith("b OK")
    finally:
        r.close()
    r = Raw(srv)
    try:
        r.send("c AUTHENTICATE PLAIN\r\n")
        assert r.line() == "+ "
        r.send("*\r\n")
        assert r.until_tagged("c")[-1].startswith("c BAD")
        bad = base64.b64encode(("\0%s\0nope" % BOB).encode()).decode()
        assert r.cmd("d", "AUTHENTICATE PLAIN %s" % bad)[-1].startswith("d NO [AUTHENTICATIONFAILED]")
    finally:
        r.close()


def test_starttls_then_login(srv):
    m = connect(srv)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ok(m.starttls(ssl_context=ctx))
    ok(m.login(ALICE, PASSWORD))
    ok(m.select("INBOX"))
    m.logout()


def test_list_lsub_namespace_special_use(srv):
    m = login(srv)
    try:
        data = ok(m.list('""', "*"))
        names = {}
        for line in data:
            mt = re.match(rb'\(([^)]*)\) "/" "(.*)"$', line)
            assert mt, line
            names[mt.group(2).decode()] = mt.group(1).decode().split()
        for box, attr in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                          ("Junk", "\\Junk"), ("Archive", "\\Archive")):
            assert attr in names[box], (box, names[box])
        assert "INBOX" in names
        assert ok(m.list('""', "%")) and ok(m.lsub('""', "*"))
        typ, data = m._simple_command("NAMESPACE")
        assert typ == "OK"
        assert m.untagged_responses.pop("NAMESPACE") == [b'(("" "/")) NIL NIL']
        # the hierarchy delimiter query
        assert ok(m.list('""', '""')) == [b'(\\Noselect) "/" ""']
    finally:
        m.logout()


def test_create_rename_delete_subscribe(srv):
    m = login(srv, BOB)
    try:
        ok(m.create("Projects/2026"))
        names = [l.decode() for l in ok(m.list('""', "Projects*"))]
        assert any(l.endswith('"Projects"') and "\\HasChildren" in l for l in names), names
        assert m.create("Projects/2026")[0] == "NO"
        assert m.create("INBOX")[0] == "NO"
        ok(m.rename("Projects", "Work"))
        names = [l.decode() for l in ok(m.list('""', "*"))]
        assert any(l.endswith('"Work/2026"') for l in names) and not any("Projects" in l for l in names)
        assert m.delete("Work")[0] == "NO"        # has inferiors
        ok(m.unsubscribe("Work/2026"))
        assert not any(b"Work/2026" in l for l in ok(m.lsub('""', "*")) if l)
        ok(m.subscribe("Work/2026"))
        ok(m.delete("Work/2026"))
        ok(m.delete("Work"))
        assert m.delete("INBOX")[0] == "NO"
        assert m.select("Work")[0] == "NO"
        assert m.create("bad*name")[0] == "NO"
    finally:
        m.logout()


def test_rename_inbox_moves_messages(srv):
    srv.add_user("renamer@local.example")
    deliver(srv, "renamer@local.example")
    deliver(srv, "renamer@local.example")
    m = login(srv, "renamer@local.example")
    try:
        ok(m.rename("INBOX", "Old"))
        assert select_uids(m, "INBOX") == []
        assert len(select_uids(m, "Old")) == 2
    finally:
        m.logout()


# ---- reading ---------------------------------------------------------------------------

def test_fetch_is_byte_identical_to_the_blob(srv):
    qid, _ = deliver(srv, subject="fetch me", body="line one\r\nline two\r\n")
    m = login(srv)
    try:
        uids = select_uids(m)
        uid = uids[-1]
        blob = srv.mail_cat(ALICE, uid)
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[] RFC822.SIZE FLAGS)"))
        assert data[0][1] == blob
        assert b"RFC822.SIZE %d" % len(blob) in flat(data)
        # PEEK: not \Seen (\Recent: this session is the first to see it)
        assert re.search(rb"FLAGS \((\\Recent)?\)", flat(data)), flat(data)
        head, _, text = blob.partition(b"\r\n\r\n")
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[HEADER] BODY.PEEK[TEXT])"))
        assert data[0][1] == head + b"\r\n\r\n" and data[1][1] == text
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[HEADER.FIELDS (Subject X-None)])"))
        assert data[0][1] == b"Subject: fetch me\r\n\r\n"
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[]<5.10>)"))
        assert b"BODY[]<5> {10}" in data[0][0] and data[0][1] == blob[5:15]
        data = ok(m.uid("FETCH", str(uid), "(RFC822.HEADER)"))
        assert data[0][1] == head + b"\r\n\r\n"
        data = ok(m.uid("FETCH", str(uid), "(INTERNALDATE UID)"))
        assert re.search(rb'INTERNALDATE "\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d \+0000"', data[0])
        # a non-PEEK body fetch sets \Seen and reports it
        data = ok(m.uid("FETCH", str(uid), "(BODY[TEXT])"))
        assert b"\\Seen" in data[0][0] and data[0][1] == text
        assert b"\\Seen" in ok(m.uid("FETCH", str(uid), "(FLAGS)"))[0]
        # MIME items (covered in depth by test_imap_mime.py)
        for item in ("ENVELOPE", "BODYSTRUCTURE", "ALL", "FULL", "BODY", "(BODY.PEEK[1])"):
            assert ok(m.uid("FETCH", str(uid), item))
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            m.uid("FETCH", str(uid), "(BODY[0])")
    finally:
        m.logout()


def test_flags_seen_across_two_sessions(srv):
    deliver(srv)
    a, b = login(srv), login(srv)
    try:
        uid = select_uids(a)[-1]
        ok(b.select("INBOX"))
        ok(a.uid("STORE", str(uid), "+FLAGS", "(\\Flagged \\Answered)"))
        ok(b.noop())
        fetches = b.untagged_responses.pop("FETCH", [])
        assert any(b"UID %d " % uid in f and b"\\Flagged" in f and b"\\Answered" in f for f in fetches), fetches
        ok(b.uid("STORE", str(uid), "-FLAGS.SILENT", "(\\Flagged)"))
        ok(a.noop())
        fetches = a.untagged_responses.pop("FETCH", [])
        assert any(b"UID %d " % uid in f and b"\\Flagged" not in f for f in fetches), fetches
        data = ok(a.uid("FETCH", str(uid), "FLAGS"))
        assert b"\\Answered" in data[0] and b"\\Flagged" not in data[0]
        # EXAMINE is read-only
        ok(b.select("INBOX", readonly=True))
        assert b.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")[0] == "NO"
    finally:
        a.logout()
        b.logout()


def test_copy_move_expunge_uidplus(srv):
    srv.add_user("mover@local.example")
    user = "mover@local.example"
    qids = [deliver(srv, user)[0] for _ in range(3)]
    m = login(srv, user)
    try:
        uids = select_uids(m)
        assert len(uids) == 3
        typ, data = m.uid("COPY", "%d:%d" % (uids[0], uids[1]), "Archive")
        assert typ == "OK", data
        uidv, src, dst = m.untagged_responses.pop("COPYUID")[0].split()
        assert src == b"%d:%d" % (uids[0], uids[1]) and dst == b"1:2"
        assert srv.blob_row(qids[0])[0] == 2 and srv.blob_row(qids[2])[0] == 1
        assert m.uid("COPY", str(uids[0]), "Nowhere")[0] == "NO"
        assert "TRYCREATE" in m.untagged_responses
        typ, data = m.uid("MOVE", str(uids[2]), "Trash")
        assert typ == "OK", data
        assert any(b"COPYUID" in x for x in m.untagged_responses.pop("OK", []))
        assert m.untagged_responses.pop("EXPUNGE", []) == [b"3"]
        assert srv.blob_row(qids[2])[0] == 1        # a move keeps the reference count
        assert select_uids(m) == uids[:2]
        ok(m.uid("STORE", str(uids[0]), "+FLAGS", "(\\Deleted)"))
        typ, data = m.expunge()
        assert typ == "OK" and data == [b"1"], data
        assert srv.blob_row(qids[0])[0] == 1        # still in Archive
        # the last reference gone removes the blob file
        path = srv.blob_path(qids[1])
        ok(m.select("Archive"))
        ok(m.store("1:*", "+FLAGS", "(\\Deleted)"))
        ok(m.select("INBOX"))
        ok(m.store("1", "+FLAGS", "(\\Deleted)"))
        ok(m.uid("EXPUNGE", str(uids[1])))
        ok(m.select("Archive"))
        ok(m.close())
        assert srv.blob_row(qids[1]) is None
        assert not __import__("os").path.exists(path)
        usage = srv.query("SELECT used_messages FROM accounts WHERE address = ?", (user,))[0][0]
        assert usage == 1                           # the message moved to Trash
    finally:
        m.logout()


def test_search(srv):
    srv.add_user("finder@local.example")
    user = "finder@local.example"
    deliver(srv, user, subject="quarterly report", body="numbers inside\r\n")
    deliver(srv, user, subject="lunch", body="pizza or pasta\r\n")
    deliver(srv, user, subject="misc", size=5000)
    m = login(srv, user)
    try:
        uids = select_uids(m)

        def search(*crit):
            return [int(x) for x in ok(m.uid("SEARCH", None, *crit))[0].split()]

        assert search("SUBJECT", "REPORT") == [uids[0]]
        assert search("BODY", "PIZZA") == [uids[1]]
        assert search("TEXT", "quarterly") == [uids[0]]
        assert search("FROM", "sender@remote") == uids
        assert search("HEADER", "Message-ID", '""') == uids
        assert search("LARGER", "4000") == [uids[2]]
        assert search("NOT", "LARGER", "4000") == uids[:2]
        assert search("OR", "SUBJECT", "lunch", "SUBJECT", "misc") == uids[1:]
        assert search("UNSEEN") == uids
        ok(m.uid("STORE", str(uids[1]), "+FLAGS", "(\\Seen)"))
        assert search("SEEN") == [uids[1]]
        assert search("UID", "%d:*" % uids[1]) == uids[1:]
        assert search("SINCE", "1-Jan-2020") == uids
        assert search("BEFORE", "1-Jan-2020") == []
        assert search("SENTON", "1-Jan-2026") == uids
        assert search("(SEEN SUBJECT lunch)") == [uids[1]]
        assert search("(SEEN SUBJECT misc)") == []
        assert ok(m.search(None, "2:3")) == [b"2 3"]
        with pytest.raises(imaplib.IMAP4.error, match="Unknown search key"):
            m.search(None, "FOO")
        with pytest.raises(imaplib.IMAP4.error, match="too deeply nested"):
            m.search(None, "NOT " * 100 + "ALL")
        assert m.search("KOI8-R", "ALL")[0] == "NO"
    finally:
        m.logout()


# ---- APPEND -----------------------------------------------------------------------------

def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_append_with_flags_and_date(srv):
    m = login(srv)
    try:
        msg = b"From: me@local.example\r\nSubject: draft\r\n\r\nappended body\r\n"
        typ, data = m.append("Drafts", "(\\Draft \\Seen)", '"05-Mar-2024 10:20:30 +0100"', msg)
        assert typ == "OK" and data[0].startswith(b"[APPENDUID "), data
        uid = int(data[0].split()[2].rstrip(b"]"))
        ok(m.select("Drafts"))
        data = ok(m.uid("FETCH", str(uid), "(FLAGS INTERNALDATE BODY.PEEK[])"))
        assert data[0][1] == msg
        assert b"\\Draft" in data[0][0] and b"\\Seen" in data[0][0]
        assert b'"05-Mar-2024 09:20:30 +0000"' in data[0][0]
        assert m.append("NoSuchBox", None, None, msg)[1][0].startswith(b"[TRYCREATE]")
    finally:
        m.logout()


@pytest.mark.slow_asan   # ASan's quarantine keeps freed buffers resident
def test_append_50mb_literal_bounded_memory(srv):
    m = login(srv, BOB)
    try:
        body = (b"x" * 76 + b"\r\n") * (50 * 1000 * 1000 // 78)   # 50 MB, under imap.max_message_size (50 MiB)
        msg = b"Subject: big\r\n\r\n" + body
        # Reset the peak ("5" to clear_refs), so the peak measured is this APPEND's.
        with open("/proc/%d/clear_refs" % srv.pid, "w") as f:
            f.write("5")
        before = vm_rss_kib(srv.pid)
        typ, data = m.append("INBOX", None, None, msg)
        assert typ == "OK", data
        grew = vm_hwm_kib(srv.pid) - before
        print("peak RSS growth during a 50 MB APPEND: %d KiB" % grew)
        assert grew < 8 * 1024, "peak RSS grew by %d KiB for a 50 MB APPEND" % grew
        uid = int(data[0].split()[2].rstrip(b"]"))
        assert srv.mail_cat(BOB, uid) == msg
        assert srv.tmp_files() == []
    finally:
        m.logout()


def test_append_too_big_is_refused_without_reading(srv):
    r = Raw(srv)
    try:
        r.login()
        r.send("a APPEND INBOX {99999999999}\r\n")
        assert r.until_tagged("a")[-1].startswith("a NO [TOOBIG]")
        assert r.cmd("b", "NOOP")[-1].startswith("b OK")
    finally:
        r.close()


def test_status_id_enable_check_unselect_and_exists(srv):
    srv.add_user("misc@local.example")
    user = "misc@local.example"
    a, b = login(srv, user), login(srv, user)
    try:
        ok(a.select("INBOX"))
        a.untagged_responses.pop("EXISTS", None)
        deliver(srv, user)
        ok(a.noop())
        assert a.untagged_responses.pop("EXISTS", []) == [b"1"]
        data = ok(b.status("INBOX", "(MESSAGES UNSEEN UIDNEXT RECENT)"))
        assert data == [b'"INBOX" (MESSAGES 1 UNSEEN 1 UIDNEXT 2 RECENT 0)'], data
        typ, data = b._simple_command("ID", "NIL")
        assert typ == "OK" and b"Strata" in b.untagged_responses.pop("ID")[0]
        typ, data = b._simple_command("ENABLE", "CONDSTORE")
        assert typ == "OK"
        ok(a._simple_command("CHECK"))
        ok(a._simple_command("UNSELECT"))
        with pytest.raises(imaplib.IMAP4.error):
            a.fetch("1", "FLAGS")
        # a mailbox deleted under a session that has it selected
        ok(a.create("Doomed"))
        ok(a.select("Doomed"))
        ok(b.delete("Doomed"))
        with pytest.raises(imaplib.IMAP4.abort):
            a.noop()
    finally:
        b.logout()


def test_expunge_is_deferred_during_fetch_and_reported_at_noop(srv):
    srv.add_user("twins@local.example")
    user = "twins@local.example"
    deliver(srv, user)
    deliver(srv, user)
    a, b = Raw(srv), login(srv, user)
    try:
        a.login(user)
        assert tagged(a.cmd("s", "SELECT INBOX")) == "OK"
        ok(b.select("INBOX"))
        ok(b.store("1", "+FLAGS", "(\\Deleted)"))
        ok(b.expunge())
        lines = a.cmd("f", "FETCH 1:2 (FLAGS)")      # no EXPUNGE during FETCH
        assert lines[-1].startswith("f OK") and not any("EXPUNGE" in l for l in lines), lines
        assert any(l.startswith("* 2 FETCH") for l in lines), lines
        lines = a.cmd("n", "NOOP")
        assert "* 1 EXPUNGE" in lines, lines
        lines = a.cmd("f2", "FETCH 1:* (UID)")
        assert len([l for l in lines if l.startswith("* ") and " FETCH " in l]) == 1, lines
    finally:
        a.close()
        b.logout()


def test_fetch_of_messages_expunged_by_another_session_ends_expungeissued(srv):
    """A FETCH that outlives another session's EXPUNGE (the client reads
    slowly, the blobs are freed meanwhile) leaves the gone messages out and
    ends NO [EXPUNGEISSUED] (RFC 2180 4.1.2, RFC 5530); the session keeps
    working and learns of the EXPUNGEs at its next NOOP."""
    user = "slowreader@local.example"
    srv.add_user(user)
    body = (b"y" * 998 + b"\r\n") * 500                      # about 500 KB each
    n = 40                                                  # 20 MB: more than socket buffers hold
    for _ in range(n):
        deliver(srv, user, body=body)
    a, b = Raw(srv, timeout=60), login(srv, user)
    try:
        a.login(user)
        assert tagged(a.cmd("s", "SELECT INBOX")) == "OK"
        a.send("fx1 FETCH 1:* (UID BODY.PEEK[])\r\n")        # not read yet: the server stalls
        time.sleep(1)
        ok(b.select("INBOX"))
        ok(b.store("1:*", "+FLAGS", "(\\Deleted)"))
        ok(b.expunge())
        lines = a.until_tagged("fx1")
        sent = [l for l in lines if l.startswith("* ") and " FETCH " in l]
        assert 0 < len(sent) < n, len(sent)
        assert lines[-1].startswith("fx1 NO [EXPUNGEISSUED]"), lines[-1]
        lines = a.cmd("n", "NOOP")
        assert lines[-1].startswith("n OK"), lines[-1]
        assert len([l for l in lines if l.endswith(" EXPUNGE")]) == n, lines
        assert "* 0 EXISTS" in a.cmd("s2", "SELECT INBOX")
    finally:
        a.close()
        b.logout()


def test_quota_applies_to_append_and_copy(srv):
    srv.add_user("small@local.example", quota_messages=2)
    user = "small@local.example"
    deliver(srv, user)
    m = login(srv, user)
    try:
        ok(m.append("INBOX", None, None, b"Subject: one\r\n\r\nbody\r\n"))
        typ, data = m.append("INBOX", None, None, b"Subject: two\r\n\r\nbody\r\n")
        assert typ == "NO" and b"OVERQUOTA" in data[0], data
        ok(m.select("INBOX"))
        assert m.copy("1", "Archive")[0] == "NO"
        assert "OVERQUOTA" in m.untagged_responses
        ok(m.uid("MOVE", "1:*", "Archive"))           # a move does not add usage
        used = srv.query("SELECT used_messages FROM accounts WHERE address = ?", (user,))[0][0]
        assert used == 2
        assert srv.tmp_files() == []
    finally:
        m.logout()


def check_store_consistency(srv):
    """Blob reference counts, quota usage and blob files agree with the
    message rows."""
    bad = srv.query("SELECT b.id, b.refcount, (SELECT count(*) FROM messages m WHERE m.blob_id = b.id) AS n"
                    " FROM blobs b WHERE b.refcount != n")
    assert bad == [], "refcounts differ from message rows: %r" % bad
    usage = srv.query("SELECT a.address, a.used_messages, a.used_bytes,"
                      " (SELECT count(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id"
                      "  WHERE mb.account_id = a.id),"
                      " (SELECT coalesce(sum(b.size), 0) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id"
                      "  JOIN blobs b ON b.id = m.blob_id WHERE mb.account_id = a.id) FROM accounts a")
    for addr, used_m, used_b, n, size in usage:
        assert (used_m, used_b) == (n, size), (addr, used_m, used_b, n, size)
    files = {p.rsplit("/", 1)[1] for p in srv.blob_files()}
    rows = {harness.msgid_to_qid(bytes(m)) for (m,) in srv.query("SELECT msgid FROM blobs")}
    assert files == rows, (files - rows, rows - files)
    assert srv.tmp_files() == []


def test_concurrent_sessions_keep_the_store_consistent(srv):
    import random
    import threading
    srv.add_user("busy@local.example")
    user = "busy@local.example"
    for _ in range(10):
        deliver(srv, user)
    errors = []
    done = {"COPY": 0, "MOVE": 0, "EXPUNGE": 0}

    def worker(seed):
        rnd = random.Random(seed)
        try:
            m = login(srv, user)
            for _ in range(40):
                box = rnd.choice(["INBOX", "Archive", "Trash"])
                ok(m.select(box))
                op = rnd.randrange(6)
                n = int(m.untagged_responses.get("EXISTS", [b"0"])[-1])
                if op == 0:
                    ok(m.append(box, None, None, make_message(to=user)))
                elif n == 0:
                    continue
                elif op == 1:
                    if m.copy("1:%d" % rnd.randint(1, n), rnd.choice(["INBOX", "Archive", "Trash"]))[0] == "OK":
                        done["COPY"] += 1
                elif op == 2:
                    if m.uid("MOVE", "1:*", rnd.choice(["Archive", "Trash"]) if box == "INBOX" else "INBOX")[0] == "OK":
                        done["MOVE"] += 1
                elif op == 3:
                    m.store("%d" % rnd.randint(1, n), "+FLAGS", "(\\Deleted)")
                elif op == 4:
                    if m.expunge()[0] == "OK":
                        done["EXPUNGE"] += 1
                else:
                    m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER])")
            m.logout()
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for _ in range(10):
        deliver(srv, user)
    for t in threads:
        t.join(120)
    assert errors == []
    check_store_consistency(srv)
    assert done["COPY"] > 0 and done["MOVE"] > 0 and done["EXPUNGE"] > 0, done


# ---- IDLE ----------------------------------------------------------------------------

def test_idle_woken_by_smtp_delivery(srv):
    srv.add_user("idler@local.example")
    r = Raw(srv)
    try:
        r.login("idler@local.example")
        lines = r.cmd("s", "SELECT INBOX")
        assert "* 0 EXISTS" in lines
        r.send("i IDLE\r\n")
        assert r.line() == "+ idling"
        deliver(srv, "idler@local.example")   # returns once the message is durable
        t0 = time.monotonic()
        r.sock.settimeout(5)
        assert r.line() == "* 1 EXISTS"
        waited = time.monotonic() - t0
        assert waited < 1.0, waited
        r.send("DONE\r\n")
        assert r.until_tagged("i")[-1].startswith("i OK")
    finally:
        r.close()


def test_idle_woken_by_other_sessions_changes(srv):
    """Flag changes and expunges by another IMAP session wake an IDLE
    session at once: the fallback poll is 30 s, the socket timeout 5 s."""
    user = "idler2@local.example"
    srv.add_user(user)
    deliver(srv, user)
    deliver(srv, user)
    r, other = Raw(srv), login(srv, user)
    try:
        r.login(user)
        assert "* 2 EXISTS" in r.cmd("s", "SELECT INBOX")
        r.send("i IDLE\r\n")
        assert r.line() == "+ idling"
        r.sock.settimeout(5)
        ok(other.select("INBOX"))
        ok(other.store("2", "+FLAGS", "(\\Flagged)"))
        line = r.line()
        assert line.startswith("* 2 FETCH (") and "\\Flagged" in line, line
        ok(other.store("1", "+FLAGS", "(\\Deleted)"))
        assert r.line().startswith("* 1 FETCH (")
        ok(other.expunge())
        assert r.line() == "* 1 EXPUNGE"
        r.send("DONE\r\n")
        assert r.until_tagged("i")[-1].startswith("i OK")
    finally:
        r.close()
        other.logout()


# ---- restart -----------------------------------------------------------------------------

def test_uidvalidity_and_uids_stable_across_restart(srv):
    m = login(srv)
    ok(m.select("INBOX"))
    uidv = m.untagged_responses["UIDVALIDITY"][0]
    uids = [int(x) for x in ok(m.uid("SEARCH", None, "ALL"))[0].split()]
    m.logout()
    srv.restart()
    m = login(srv)
    try:
        ok(m.select("INBOX"))
        assert m.untagged_responses["UIDVALIDITY"][0] == uidv
        assert [int(x) for x in ok(m.uid("SEARCH", None, "ALL"))[0].split()] == uids
    finally:
        m.logout()


# ---- hostile input -------------------------------------------------------------------------

MALFORMED = [
    ("unbalanced open paren", "x1 FETCH 1 (FLAGS", "BAD"),
    ("unbalanced close paren", "x2 FETCH 1 FLAGS)", "BAD"),
    ("negative literal", "x3 LOGIN {-5}", "BAD"),
    ("bad sequence set", "x4 FETCH 0:x FLAGS", "BAD"),
    ("sequence number past the end", "x5 FETCH 99999 FLAGS", "BAD"),
    ("zero sequence number", "x6 UID FETCH 0 FLAGS", "BAD"),
    ("unknown command", "x7 FROBNICATE", "BAD"),
    ("uid with a non-uid command", "x8 UID NOOP", "BAD"),
    ("missing argument", "x9 STORE 1 +FLAGS", "BAD"),
    ("unknown fetch item", "x10 FETCH 1 (FOO)", "BAD"),
    ("bad flag", "x11 STORE 1 +FLAGS (\\Bogus)", "BAD"),
]


def test_wrong_state_commands(srv):
    r = Raw(srv)
    try:
        for tag, cmd in (("w1", "SELECT INBOX"), ("w2", "FETCH 1 FLAGS"), ("w3", "LIST \"\" *"),
                         ("w4", "APPEND INBOX {3+}\r\nabc")):
            assert tagged(r.cmd(tag, cmd)) == "BAD", cmd
        r.login()
        for tag, cmd in (("w5", "FETCH 1 FLAGS"), ("w6", "EXPUNGE"), ("w7", "CLOSE"), ("w8", "STARTTLS")):
            assert tagged(r.cmd(tag, cmd)) == "BAD", cmd
        assert tagged(r.cmd("w9", "NOOP")) == "OK"
    finally:
        r.close()


def test_malformed_input_gets_bad_and_server_keeps_working(srv):
    deliver(srv)
    r = Raw(srv)
    try:
        r.login()
        assert tagged(r.cmd("s", "SELECT INBOX")) == "OK"
        for label, line, want in MALFORMED:
            lines = r.cmd(line.split(" ")[0], line.split(" ", 1)[1])
            assert lines[-1].split(" ")[1] == want, (label, lines)
        r.send(" NOOP\r\n")
        assert r.line().startswith("* BAD")
        # 10,000-deep nesting
        r.send("n1 FETCH 1 " + "(" * 10000 + "FLAGS" + ")" * 10000 + "\r\n")
        lines = r.until_tagged("n1")
        assert lines[-1].startswith("n1 BAD"), lines
        # a huge synchronising literal is refused without being read
        r.send("n2 LOGIN {99999999999999}\r\n")
        assert r.until_tagged("n2")[-1].startswith("n2 BAD")
        # a non-synchronising literal over the in-memory limit is skipped
        r.send("n3 SEARCH TEXT {100000+}\r\n" + "y" * 100000 + "\r\n")
        assert r.until_tagged("n3")[-1].startswith("n3 BAD")
        # an over-long line resynchronises at its end
        r.send("n4 SEARCH " + "a" * 200000 + "\r\n")
        assert r.until_tagged("n4")[-1].startswith("n4 BAD")
        assert tagged(r.cmd("ok", "NOOP")) == "OK"
    finally:
        r.close()
    # and a fresh session still works
    m = login(srv)
    ok(m.select("INBOX"))
    m.logout()


def test_starttls_discards_pipelined_plaintext(srv):
    r = Raw(srv)
    try:
        r.send("a STARTTLS\r\nb LOGIN %s %s\r\n" % (ALICE, PASSWORD))
        assert r.line().startswith("a OK")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tls = ctx.wrap_socket(r.sock)
        tls.sendall(b"c CAPABILITY\r\n")
        data = b""
        while b"c OK" not in data:
            chunk = tls.recv(4096)
            assert chunk
            data += chunk
        assert b"b OK" not in data and b"b NO" not in data and b"STARTTLS" not in data.split(b"c OK")[0]
    finally:
        r.close()


# ---- memory per idle connection ---------------------------------------------------------

def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow_asan
def test_memory_per_idle_connection(srv):
    time.sleep(0.2)
    before = vm_rss_kib(srv.pid)
    conns = []
    try:
        for _ in range(1000):
            r = Raw(srv)
            conns.append(r)
        # authenticated and selected is the common idle state
        for r in conns[:200]:
            r.login()
            r.cmd("s", "SELECT INBOX")
        time.sleep(0.3)
        per = (vm_rss_kib(srv.pid) - before) * 1024 / len(conns)
        print("IMAP RSS per idle connection: %.0f bytes" % per)
        assert per < 32 * 1024, per
    finally:
        for r in conns:
            r.close()
