"""Index loss: `strata store backup`, the automatic rebuild at start when the
index is deleted or overwritten with garbage, `strata store rebuild` by
hand, the rebuild without any backup, the periodic backup thread, and
`strata store verify` before and after.

Every rebuild must bring each message back into its folder with its UID
and its flags as of the newest backup; mail delivered after the backup
comes back too (from the blob trailers), mail expunged after the backup
stays gone."""
import imaplib
import os
import re
import sqlite3
import time

import harness
from harness import make_message

ALICE, BOB = "alice@local.example", "bob@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)
SEEN, ANSWERED, FLAGGED = 1, 2, 4


def start(factory, **extra):
    port = harness.free_port()
    opts = {"imap.listen": "127.0.0.1:%d" % port, "store.backup_interval": "0"}
    opts.update(extra)
    s = factory.new(options=opts, populate=True)
    s.imap_port = port
    return s


def login(srv, user=ALICE):
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30)
    m.login(user, PASSWORD)
    return m


def ok(resp):
    typ, data = resp
    assert typ == "OK", (typ, data)
    return data


def deliver(srv, to=ALICE, subject=None):
    qid, data = srv.deliver([to], make_message(to=to, subject=subject))
    return qid


def folders(srv, address):
    """{mailbox: [(uid, msgid bytes, flags)]} and {mailbox: uidvalidity}."""
    rows = srv.query(
        "SELECT mb.name, mb.uidvalidity, m.uid, b.msgid, m.flags FROM mailboxes mb"
        " JOIN accounts a ON a.id = mb.account_id"
        " LEFT JOIN messages m ON m.mailbox_id = mb.id LEFT JOIN blobs b ON b.id = m.blob_id"
        " WHERE a.address = ? ORDER BY mb.name, m.uid", (address,))
    content, uidv = {}, {}
    for name, v, uid, msgid, flags in rows:
        uidv[name] = v
        content.setdefault(name, [])
        if uid is not None:
            content[name].append((uid, bytes(msgid), flags))
    return content, uidv


def index_files(srv):
    base = os.path.join(srv.state_dir, "index.db")
    return [base + s for s in ("", "-wal", "-shm")]


def verify_clean(srv):
    r = srv.cli("store", "verify", rc=None)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "0 problems" in r.stderr, r.stderr


def build_history(srv):
    """Deliver, flag and move; back up; then change more.  Returns the state
    a rebuild must produce for alice and bob."""
    q = [deliver(srv, subject="m%d" % i) for i in range(1, 5)]
    qb = deliver(srv, BOB, subject="for bob")
    m = login(srv)
    try:
        ok(m.select("INBOX"))
        ok(m.uid("STORE", "1", "+FLAGS", "(\\Seen)"))
        ok(m.uid("STORE", "2", "+FLAGS", "(\\Flagged)"))
        ok(m.uid("MOVE", "3", "Archive"))
    finally:
        m.logout()
    backup = srv.cli("store", "backup").stdout.strip()
    assert os.path.isfile(backup) and os.path.dirname(backup) == os.path.join(srv.state_dir, "backup")
    # After the backup: two more deliveries, a flag change, an expunge.
    q5, q6 = deliver(srv, subject="m5"), deliver(srv, subject="m6")
    m = login(srv)
    try:
        ok(m.select("INBOX"))
        ok(m.uid("STORE", "2", "+FLAGS", "(\\Answered)"))
        ok(m.uid("STORE", "4", "+FLAGS", "(\\Deleted)"))
        ok(m.expunge())
    finally:
        m.logout()
    mid = harness.qid_to_msgid
    live, uidv = folders(srv, ALICE)
    assert live["INBOX"] == [(1, mid(q[0]), SEEN), (2, mid(q[1]), FLAGGED | ANSWERED),
                             (5, mid(q5), 0), (6, mid(q6), 0)], live["INBOX"]
    expected = dict(live)
    # The flag change made after the backup is lost: flags are the backup's.
    expected["INBOX"] = [(1, mid(q[0]), SEEN), (2, mid(q[1]), FLAGGED), (5, mid(q5), 0), (6, mid(q6), 0)]
    assert expected["Archive"] == [(1, mid(q[2]), 0)]
    bob = folders(srv, BOB)
    assert bob[0]["INBOX"] == [(1, mid(qb), 0)]
    return expected, uidv, bob, srv.mail_cat(ALICE, 5)


def check_restored(srv, expected, uidv, bob, m5_bytes):
    got, got_uidv = folders(srv, ALICE)
    assert got == expected
    assert got_uidv == uidv                     # UIDVALIDITY kept: clients need no resync
    assert folders(srv, BOB) == bob
    assert srv.mail_cat(ALICE, 5) == m5_bytes
    usage = srv.query("SELECT used_messages FROM accounts WHERE address = ?", (ALICE,))[0][0]
    assert usage == sum(len(v) for v in expected.values())
    m = login(srv)                              # IMAP serves the rebuilt index
    try:
        ok(m.select("Archive"))
        assert ok(m.uid("SEARCH", None, "ALL"))[0].split() == [b"1"]
        ok(m.select("INBOX"))
        data = ok(m.uid("FETCH", "1:*", "(FLAGS)"))
        flags = {}
        for d in data:
            line = (d if isinstance(d, bytes) else d[0]).decode()
            flags[int(re.search(r"UID (\d+)", line).group(1))] = re.search(r"FLAGS \(([^)]*)\)", line).group(1)
        assert flags[1] == "\\Seen" and flags[2] == "\\Flagged", flags
    finally:
        m.logout()
    verify_clean(srv)


def test_backup_then_index_loss_corruption_and_manual_rebuild(strata_factory):
    srv = start(strata_factory)
    assert "INDEX DAMAGED" not in srv.read_log()    # a first start is not a loss
    expected, uidv, bob, m5 = build_history(srv)
    verify_clean(srv)
    # Rebuild refuses while the daemon has the index open.
    r = srv.cli("store", "rebuild", rc=1)
    assert "in use" in r.stderr, r.stderr

    # 1. The index and its WAL are deleted: the start rebuilds it.
    srv.stop()
    for p in index_files(srv):
        if os.path.exists(p):
            os.unlink(p)
    srv.start()
    assert "INDEX DAMAGED" in srv.read_log()
    check_restored(srv, expected, uidv, bob, m5)
    # Delivery continues with the next UIDs.
    q7 = deliver(srv, subject="m7")
    assert folders(srv, ALICE)[0]["INBOX"][-1] == (7, harness.qid_to_msgid(q7), 0)
    expected["INBOX"].append((7, harness.qid_to_msgid(q7), 0))

    # 2. Garbage written over the index.
    srv.stop()
    path = index_files(srv)[0]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(os.urandom(min(size, 8192)))
    srv.start()
    assert "INDEX DAMAGED" in srv.read_log()
    check_restored(srv, expected, uidv, bob, m5)
    broken = [n for n in os.listdir(srv.state_dir) if n.startswith("index.db.broken-")]
    assert broken, os.listdir(srv.state_dir)     # the damaged file is kept for inspection

    # 3. By hand, with the daemon stopped.
    srv.stop()
    r = srv.cli("store", "rebuild")
    assert "rebuilt from: " + os.path.join(srv.state_dir, "backup") in r.stdout, r.stdout
    assert "messages dropped (blob gone): 1" in r.stdout, r.stdout   # m4, expunged after the backup
    srv.start()
    assert "INDEX DAMAGED" not in srv.read_log()
    check_restored(srv, expected, uidv, bob, m5)


def test_rebuild_without_backup_needs_accounts_first(strata_factory):
    srv = start(strata_factory)
    q = [deliver(srv, subject="n%d" % i) for i in range(3)]
    old_uidv = folders(srv, ALICE)[1]["INBOX"]
    srv.stop()
    for p in index_files(srv):
        if os.path.exists(p):
            os.unlink(p)
    # No backup and no accounts: the daemon refuses to start on an empty index.
    srv.start(wait=False)
    srv.wait_exit(expect_rc=1)
    assert "strata user import" in srv.read_log()
    # Accounts re-created (a fresh index), then the rebuild files the mail.
    srv.add_domain("local.example")
    for u in ("alice", "bob", "carol"):
        srv.add_user("%s@local.example" % u)
    r = srv.cli("store", "rebuild")
    assert "messages added from files: 3" in r.stdout, r.stdout
    got, uidv = folders(srv, ALICE)
    assert [(u, m) for u, m, _ in got["INBOX"]] == [(i + 1, harness.qid_to_msgid(x)) for i, x in enumerate(q)]
    assert uidv["INBOX"] != old_uidv             # a new UIDVALIDITY: clients resync
    srv.start()
    verify_clean(srv)


def test_verify_reports_problems(strata_factory):
    srv = start(strata_factory)
    q = [deliver(srv) for _ in range(2)]
    verify_clean(srv)
    os.unlink(srv.blob_path(q[0]))
    name = os.path.basename(srv.blob_path(q[1]))
    orphan = os.path.join(os.path.dirname(srv.blob_path(q[1])), name[:-1] + ("0" if name[-1] != "0" else "1"))
    with open(orphan, "w") as f:
        f.write("not a blob")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    r = srv.cli("store", "verify", rc=1)
    assert "file missing" in r.stdout and "orphan blob file" in r.stdout, r.stdout
    os.unlink(orphan)


def test_backup_thread_keeps_the_newest(strata_factory):
    srv = start(strata_factory, **{"store.backup_interval": "1s", "store.backup_keep": "2"})
    bdir = os.path.join(srv.state_dir, "backup")

    def names():
        return sorted(n for n in os.listdir(bdir) if n.startswith("index-")) if os.path.isdir(bdir) else []

    first = harness.wait_until(lambda: names(), 20, what="a first backup")
    assert first
    seen = set()
    deadline = time.time() + 30
    while time.time() < deadline and len(seen) < 4:
        seen.update(names())
        assert len(names()) <= 2, names()
        time.sleep(0.2)
    assert len(seen) >= 4, seen                 # new ones keep coming, old ones go
    assert not [n for n in os.listdir(bdir) if n.startswith(".tmp-")]


def test_schema_upgrade_takes_and_verifies_a_backup_first(strata_factory):
    """An index at an older schema version is backed up (online backup API)
    and the backup verified before the upgrade; the backup keeps the old
    version, the upgraded index the new one, and nothing is lost."""
    srv = start(strata_factory)
    deliver(srv)
    bdir = os.path.join(srv.state_dir, "backup")
    before = set(os.listdir(bdir)) if os.path.isdir(bdir) else set()
    latest = srv.query("PRAGMA user_version")[0][0]
    srv.stop()
    con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"))
    con.execute("PRAGMA user_version = %d" % (latest - 1))   # the last migration is idempotent
    con.commit()
    con.close()
    srv.start()
    new = sorted(n for n in set(os.listdir(bdir)) - before if n.startswith("index-"))
    assert len(new) == 1, new
    assert re.search(r"store: index backed up to \S+%s and verified in \d+ ms before its schema upgrade "
                     r"from version %d" % (re.escape(new[0]), latest - 1), srv.read_log())
    b = sqlite3.connect("file:%s?mode=ro" % os.path.join(bdir, new[0]), uri=True)
    try:
        assert b.execute("PRAGMA user_version").fetchone()[0] == latest - 1
        assert b.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        b.close()
    assert srv.query("PRAGMA user_version")[0][0] == latest
    assert srv.query("SELECT COUNT(*) FROM messages")[0][0] == 1
    # an index already at this version is not backed up again at start
    srv.restart()
    assert sorted(n for n in set(os.listdir(bdir)) - before if n.startswith("index-")) == new


def test_schema_upgrade_without_a_backup_changes_nothing(strata_factory):
    """When the backup before an upgrade cannot be taken, the daemon does
    not start and the index keeps its old version."""
    srv = start(strata_factory)
    deliver(srv)
    latest = srv.query("PRAGMA user_version")[0][0]
    srv.stop()
    con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"))
    con.execute("PRAGMA user_version = %d" % (latest - 1))
    con.commit()
    con.close()
    blocker = os.path.join(srv.state_dir, "not-a-dir")
    with open(blocker, "w") as f:
        f.write("x")
    srv.options["store.backup_dir"] = os.path.join(blocker, "backup")
    srv.start(wait=False)
    srv.wait_exit(expect_rc=1)
    assert "backing up the index before its schema upgrade from version %d failed, nothing was changed" % (
        latest - 1) in srv.read_log()
    assert srv.query("PRAGMA user_version")[0][0] == latest - 1
    del srv.options["store.backup_dir"]
    srv.start()
    assert srv.query("PRAGMA user_version")[0][0] == latest
    assert srv.query("SELECT COUNT(*) FROM messages")[0][0] == 1


def test_truncated_index_is_found_by_the_start_up_probe(strata_factory):
    """The default start-up check (store.startup_check = probe) reads the
    edges of every table, not every page: an index cut short is still found
    and rebuilt."""
    srv = start(strata_factory)
    for i in range(300):                    # enough rows for multi-level b-trees
        deliver(srv, subject="t%d" % i)
    ok_before = srv.query("SELECT COUNT(*) FROM messages")[0][0]
    srv.cli("store", "backup")
    srv.stop()
    con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    path = os.path.join(srv.state_dir, "index.db")
    os.truncate(path, os.path.getsize(path) // 2)
    srv.start()
    assert "INDEX DAMAGED" in srv.read_log()
    assert srv.query("SELECT COUNT(*) FROM messages")[0][0] == ok_before
