"""Storage tiering (docs/TIERING.md) against the real daemon: three tiers in
temporary directories with small capacities; demotion under capacity
pressure; reads over IMAP and `strata mail cat` while the mover runs;
`strata tier move`, `verify`, `status`, `policy`; SIGKILL during move bursts
(daemon and CLI), then restart: verify clean and every message
byte-identical; a zstd-compressed archive tier read over IMAP and POP3, and
rebuilt after index loss."""
import imaplib
import os
import poplib
import random
import re
import signal
import sqlite3
import subprocess
import time

import pytest

import harness
from harness import make_message, wait_until

ALICE, BOB = "alice@local.example", "bob@local.example"
PASSWORD = "secret-pw"


def tier_options(state_dir, fast_cap="12k", std_cap="24k", extra=None):
    # Tier directories inside state_dir: the daemon creates them after it
    # dropped to the service user (when the suite runs as root).
    o = {
        "tier.names": "fast,standard,archive",
        "tier.standard.path": os.path.join(state_dir, "t-standard"),
        "tier.archive.path": os.path.join(state_dir, "t-archive"),
        "tier.fast.capacity": fast_cap,
        "tier.standard.capacity": std_cap,
        "tier.interval": "200ms",
        # The tests read messages to check them: with the default of one
        # read day, those reads alone would promote what they moved down.
        "tier.promote_days": "2",
    }
    o.update(extra or {})
    return o


def new_tiered(factory, extra=None, imap=True, **kw):
    s = factory.new(start=False)
    s.options.update(tier_options(s.state_dir, extra=extra, **kw))
    s.imap_port = harness.free_port()
    if imap:
        s.options["imap.listen"] = "127.0.0.1:%d" % s.imap_port
    s.start()
    conftest_populate(s)
    return s


def conftest_populate(s):
    s.add_domain("local.example")
    for u in ("alice", "bob", "carol"):
        s.add_user("%s@local.example" % u)


def tier_counts(s):
    """{tier: messages} from the index."""
    return dict(s.query("SELECT tier, count(*) FROM blobs GROUP BY tier"))


def tier_bytes(s):
    return dict(s.query("SELECT tier, sum(size) FROM blobs GROUP BY tier"))


def deliver_many(s, n, size=2000, rcpt=ALICE):
    for _ in range(n):
        s.deliver([rcpt], make_message(to=rcpt, size=size))


def snapshot(s, address=ALICE):
    return {uid: s.mail_cat(address, uid) for uid in s.mail_uids(address)}


def imap_fetch_all(s, address=ALICE):
    m = imaplib.IMAP4("127.0.0.1", s.imap_port, timeout=30)
    try:
        m.login(address, PASSWORD)
        typ, _ = m.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = m.uid("SEARCH", None, "ALL")
        assert typ == "OK"
        out = {}
        for uid in data[0].split():
            typ, d = m.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
            assert typ == "OK", (uid, d)
            out[int(uid)] = d[0][1]
        return out
    finally:
        m.logout()


def verify_clean(s):
    r = s.cli("tier", "verify", rc=None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 problem(s)" in r.stdout, r.stdout


def test_no_tier_config_is_one_fast_tier(strata_factory):
    s = strata_factory.new(populate=True)
    s.deliver([ALICE])
    out = s.cli("tier", "status").stdout
    assert "fast" in out and "standard" not in out, out
    assert s.cli("tier", "policy").stdout.startswith("tiers (fastest first; new mail lands on fast)")
    verify_clean(s)


def test_bad_tier_config_is_refused(strata_factory, tmp_path):
    s = strata_factory.new(start=False)
    for opts, text in [
        (["tier.names=fast,slow"], "tier.slow.path is not set"),
        (["tier.nope.path=/x"], "'nope' is not in tier.names"),
        (["tier.names=fast,slow", "tier.slow.path=%s" % tmp_path, "tier.pin=folder:A=cold"],
         "names a tier not in tier.names"),
        (["tier.fast.capacity=150%"], "is not 1% to 100%"),
        (["tier.names=a,a"], "appears twice"),
    ]:
        args = []
        for o in opts:
            args += ["-o", o]
        r = s.cli(*(args + ["config", "check"]), rc=1)
        assert text in r.stderr, (opts, r.stderr)


def test_demotion_under_capacity_pressure_and_reads_stay_identical(strata_factory):
    s = new_tiered(strata_factory)
    deliver_many(s, 24)                       # ~48 KB against 12k + 24k targets
    before = snapshot(s)
    assert len(before) == 24

    def settled():
        b = tier_bytes(s)
        return b.get(0, 0) <= 12 * 1024 and b.get(1, 0) <= 24 * 1024 and b.get(2, 0) > 0
    # read while the mover works: every read must succeed and be identical
    deadline = time.time() + 30 * harness.SLOW
    while not settled():
        assert time.time() < deadline, tier_bytes(s)
        assert imap_fetch_all(s) == before
    assert imap_fetch_all(s) == before
    assert snapshot(s) == before
    verify_clean(s)
    st = s.cli("tier", "status").stdout
    assert "archive" in st and "%" in st, st
    m = s.metrics()
    assert "strata_tier_moves_total" in m


def test_tier_move_cli_and_pins(strata_factory):
    s = new_tiered(strata_factory, fast_cap="10M", std_cap="10M")
    deliver_many(s, 5)
    deliver_many(s, 3, rcpt=BOB)
    before = snapshot(s)
    r = s.cli("tier", "move", "--account", ALICE, "--to", "archive")
    assert "moved 5 message(s)" in r.stdout, r.stdout
    archived = dict(s.query("SELECT tier, count(*) FROM blobs GROUP BY tier"))
    assert archived.get(2) == 5 and archived.get(0) == 3, archived
    assert snapshot(s) == before
    assert imap_fetch_all(s) == before
    # IMAP body reads reach the heat table (flushed every 2 s), one row per blob
    wait_until(lambda: s.query("SELECT count(*) FROM heat")[0][0] == 5, 10 * harness.SLOW,
               what="heat rows for alice's 5 messages")
    assert s.query("SELECT min(score) FROM heat")[0][0] >= 1.0
    # hot and unconstrained: without a pin nothing is promoted back by a single read
    time.sleep(1)
    assert tier_counts(s).get(2) == 5
    r = s.cli("tier", "move", "--older-than", "1h", "--to", "fast")
    assert "moved 0 message(s)" in r.stdout
    r = s.cli("tier", "move", "--to", "fast", rc=2)
    r = s.cli("tier", "move", "--account", ALICE, "--to", "nowhere", rc=1)
    assert "no tier named" in r.stderr
    verify_clean(s)


def test_pin_moves_an_account(strata_factory):
    s = new_tiered(strata_factory, fast_cap="10M", std_cap="10M",
                   extra={"tier.pin": "account:%s=standard" % BOB})
    deliver_many(s, 3, rcpt=BOB)
    deliver_many(s, 2, rcpt=ALICE)
    before = snapshot(s, BOB)
    wait_until(lambda: tier_counts(s).get(1) == 3, 20 * harness.SLOW, what="bob pinned to standard")
    assert tier_counts(s).get(0) == 2
    assert snapshot(s, BOB) == before
    assert "account %s -> standard" % BOB in s.cli("tier", "policy").stdout
    verify_clean(s)


def test_verify_finds_missing_and_orphans(strata_factory):
    s = new_tiered(strata_factory, imap=False, fast_cap="10M", std_cap="10M")
    qid, _ = s.deliver([ALICE])
    verify_clean(s)
    orphan = os.path.join(s.state_dir, "t-archive", "01ABC", "DE", "01ABCDEFGHJKMNPQRSTVWXYZ01")
    os.makedirs(os.path.dirname(orphan))
    with open(orphan, "wb") as f:
        f.write(b"junk")
    r = s.cli("tier", "verify", rc=1)
    assert "orphan on tier archive" in r.stdout, r.stdout
    os.unlink(orphan)
    os.rename(s.blob_path(qid), s.blob_path(qid) + ".away")
    r = s.cli("tier", "verify", rc=1)
    assert "missing on tier fast" in r.stdout, r.stdout
    os.rename(s.blob_path(qid) + ".away", s.blob_path(qid))
    verify_clean(s)


def test_sigkill_during_daemon_move_bursts(strata_factory):
    # Each restart flips a pin so the mover has a burst of 30 moves to make
    # (10 files/s after a 10-file burst: about 2 s); SIGKILL lands at a random
    # moment in it.
    rnd = random.Random(4242)
    s = new_tiered(strata_factory, fast_cap="10M", std_cap="10M",
                   extra={"tier.move_files": "10"})
    deliver_many(s, 30, size=1500)
    before = snapshot(s)
    pins = ["account:%s=archive" % ALICE, "account:%s=fast" % ALICE, "account:%s=standard" % ALICE]
    for i in range(8):
        s.kill()
        s.options["tier.pin"] = pins[i % 3]
        s.start()
        time.sleep(rnd.uniform(0.1, 1.2))
        assert imap_fetch_all(s) == before
    s.kill()
    s.options["tier.pin"] = pins[0]
    s.start()
    wait_until(lambda: tier_counts(s) == {2: 30}, 30 * harness.SLOW, what="all on archive")
    s.stop()
    verify_clean(s)
    s.start()
    assert imap_fetch_all(s) == before
    assert snapshot(s) == before
    assert s.query("SELECT count(*) FROM tier_moves")[0][0] == 0


def test_sigkill_during_cli_moves_then_recovery(strata_factory):
    rnd = random.Random(99)
    s = new_tiered(strata_factory, imap=False, fast_cap="10M", std_cap="10M",
                   extra={"tier.move_files": "30"})
    deliver_many(s, 20, size=1200)
    before = snapshot(s)
    target = "archive"
    for i in range(5):
        p = subprocess.Popen(s.cli_cmd("tier", "move", "--account", ALICE, "--to", target),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=harness.proc_env())
        time.sleep(rnd.uniform(0.05, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert snapshot(s) == before       # reads never fail, even before recovery
        target = "standard" if target == "archive" else "archive"
    # the next mover (the CLI here) completes or rolls back what was left
    s.cli("tier", "move", "--account", ALICE, "--to", "standard")
    verify_clean(s)
    assert tier_counts(s).get(1) == 20
    assert snapshot(s) == before


def blob_files(s):
    """Every blob file on every tier (not temp files)."""
    found = set()
    for root in (s.options["store.blob_dir"] if "store.blob_dir" in s.options
                 else os.path.join(s.state_dir, "blobs"),
                 os.path.join(s.state_dir, "t-standard"), os.path.join(s.state_dir, "t-archive")):
        for dirpath, _, files in os.walk(root):
            if os.path.basename(dirpath) in ("tmp", "tier-tmp"):
                continue
            found.update(f for f in files if len(f) == 26)
    return found


def test_deleting_mail_on_a_slower_tier_removes_its_files(strata_factory):
    """An IMAP expunge and an account deletion free the
    files of blobs that live on other tiers than the first, not only on it."""
    s = new_tiered(strata_factory, fast_cap="10M", std_cap="10M")
    deliver_many(s, 3)
    deliver_many(s, 2, rcpt=BOB)
    s.cli("tier", "move", "--account", ALICE, "--to", "archive")
    s.cli("tier", "move", "--account", BOB, "--to", "standard")
    assert tier_counts(s) == {2: 3, 1: 2}
    assert len(blob_files(s)) == 5
    # IMAP expunge of alice's archived mail
    m = imaplib.IMAP4("127.0.0.1", s.imap_port, timeout=30)
    try:
        m.login(ALICE, PASSWORD)
        assert m.select("INBOX")[0] == "OK"
        assert m.store("1:*", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert m.expunge()[0] == "OK"
    finally:
        m.logout()
    assert tier_counts(s) == {1: 2}
    assert len(blob_files(s)) == 2, blob_files(s)
    # deleting bob's account frees his files on the standard tier
    s.cli("user", "del", BOB)
    assert tier_counts(s) == {}
    assert blob_files(s) == set()
    verify_clean(s)


# ---- compression (tier.<name>.compress = zstd) ---------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

MULTIPART = (b"From: <a@remote.example>\r\nTo: <alice@local.example>\r\nSubject: parts\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
             b"preamble\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
             + b"plain text line, compressible compressible compressible\r\n" * 80 +
             b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n" * 40 + b"--b1--\r\n")

FETCH_ITEMS = ("(RFC822.SIZE BODYSTRUCTURE BODY.PEEK[] BODY.PEEK[]<100.200> BODY.PEEK[TEXT]"
               " BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[1] BODY.PEEK[1]<7.33>)")


def imap_fetch_items(s, address=ALICE, skip=()):
    """{uid: the raw FETCH response} for every message (but those in skip),
    read-only."""
    m = imaplib.IMAP4("127.0.0.1", s.imap_port, timeout=30)
    try:
        m.login(address, PASSWORD)
        assert m.select("INBOX", readonly=True)[0] == "OK"
        typ, data = m.uid("SEARCH", None, "ALL")
        out = {}
        for uid in data[0].split():
            if int(uid) in skip:
                continue
            typ, d = m.uid("FETCH", uid.decode(), FETCH_ITEMS)
            assert typ == "OK", (uid, d)
            out[int(uid)] = d
        return out
    finally:
        m.logout()


def pop3_retr_all(s, address=ALICE):
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=30)
    try:
        p.user(address)
        p.pass_(PASSWORD)
        _, listing, _ = p.list()
        out = {}
        for entry in listing:
            n, size = entry.split()
            _, lines, octets = p.retr(int(n))
            out[int(n)] = (int(size), octets, lines)
        return out
    finally:
        p.quit()


def archive_files(s):
    root = os.path.join(s.state_dir, "t-archive")
    files = []
    for dirpath, _, names in os.walk(root):
        if os.path.basename(dirpath) == "tier-tmp":
            continue
        files += [os.path.join(dirpath, n) for n in names if len(n) == 26]
    return files


def new_compressed(factory):
    s = factory.new(start=False)
    s.options.update(tier_options(s.state_dir, fast_cap="10M", std_cap="10M",
                                  extra={"tier.archive.compress": "zstd", "store.backup_interval": "0"}))
    s.imap_port, s.pop3_port = harness.free_port(), harness.free_port()
    s.options["imap.listen"] = "127.0.0.1:%d" % s.imap_port
    s.options["pop3.listen"] = "127.0.0.1:%d" % s.pop3_port
    s.start()
    conftest_populate(s)
    return s


def test_compressed_archive_reads_are_identical(strata_factory):
    """IMAP FETCH (whole, partial, sections, BODYSTRUCTURE, RFC822.SIZE) and
    POP3 RETR of mail on a zstd tier equal what they were on the first tier;
    `strata tier move` compresses into the tier and decompresses out of it."""
    s = new_compressed(strata_factory)
    s.deliver([ALICE], make_message(to=ALICE, size=30000))
    s.deliver([ALICE], MULTIPART)
    s.deliver([ALICE], make_message(to=ALICE))
    s.deliver([BOB], make_message(to=BOB, size=5000))
    before = snapshot(s)
    imap_before, pop_before = imap_fetch_items(s), pop3_retr_all(s)
    assert len(before) == 3 and len(imap_before) == 3
    for uid, d in imap_before.items():
        assert ("RFC822.SIZE %d " % len(before[uid])).encode() in d[0][0], d[0][0]
    assert "compress zstd:3" in s.cli("tier", "policy").stdout

    r = s.cli("tier", "move", "--account", ALICE, "--to", "archive")
    assert "moved 3 message(s)" in r.stdout, r.stdout
    assert tier_counts(s) == {2: 3, 0: 1}
    files = archive_files(s)
    assert len(files) == 3
    sizes = {len(v) for v in before.values()}
    for path in files:
        data = open(path, "rb").read()
        assert data.startswith(ZSTD_MAGIC), path
        assert b"\ncompress: zstd\nstored: " in data[-400:], data[-400:]
    big = max(files, key=lambda p: int(re.search(rb"\nsize: (\d+)\n", open(p, "rb").read()[-400:]).group(1)))
    assert os.path.getsize(big) < max(sizes) // 4, (os.path.getsize(big), max(sizes))

    assert imap_fetch_items(s) == imap_before
    assert pop3_retr_all(s) == pop_before
    assert imap_fetch_all(s) == before
    verify_clean(s)
    assert "0 problems" in s.cli("store", "verify", rc=None).stderr

    # out of the compressed tier: plain files again, byte for byte
    r = s.cli("tier", "move", "--account", ALICE, "--to", "standard")
    assert "moved 3 message(s)" in r.stdout, r.stdout
    assert archive_files(s) == []
    assert snapshot(s) == before
    assert imap_fetch_items(s) == imap_before
    assert pop3_retr_all(s) == pop_before
    verify_clean(s)


def test_rebuild_with_compressed_blobs(strata_factory):
    """The index is lost while mail sits compressed on the archive tier: the
    start-up rebuild (backup + blob trailers) brings every message back, on
    the tier where its file is, byte-identical over IMAP."""
    s = new_compressed(strata_factory)
    for size in (200, 8000, 20000):
        s.deliver([ALICE], make_message(to=ALICE, size=size))
    s.cli("store", "backup")
    s.deliver([ALICE], make_message(to=ALICE, size=12000))   # known only to its trailer
    before = snapshot(s)
    imap_before = imap_fetch_items(s)
    s.cli("tier", "move", "--account", ALICE, "--to", "archive")
    assert tier_counts(s) == {2: 4}
    s.stop()
    for sfx in ("", "-wal", "-shm"):
        p = os.path.join(s.state_dir, "index.db" + sfx)
        if os.path.exists(p):
            os.unlink(p)
    s.start()
    assert tier_counts(s) == {2: 4}
    # (the added message has no cached MIME row yet: test_path_readers_of_compressed_blobs)
    assert imap_fetch_all(s) == before
    got = pop3_retr_all(s)
    assert sorted(v[0] for v in got.values()) == sorted(len(v) for v in before.values())
    assert imap_fetch_items(s, skip=(4,)) == {k: v for k, v in imap_before.items() if k != 4}
    verify_clean(s)
    # and back to a plain tier, identical to what was delivered
    s.cli("tier", "move", "--account", ALICE, "--to", "fast")
    assert snapshot(s) == before


def test_path_readers_of_compressed_blobs(strata_factory):
    """The MIME structure of a compressed blob without a cached row, SEARCH
    on its header and `strata mail cat` read the message, not the frame."""
    s = new_compressed(strata_factory)
    s.deliver([ALICE], MULTIPART)
    before = snapshot(s)
    imap_before = imap_fetch_items(s)
    s.cli("tier", "move", "--account", ALICE, "--to", "archive")
    db = sqlite3.connect(os.path.join(s.state_dir, "index.db"), timeout=10)
    try:
        db.execute("DELETE FROM mime")
        db.commit()
    finally:
        db.close()
    assert imap_fetch_items(s) == imap_before
    m = imaplib.IMAP4("127.0.0.1", s.imap_port, timeout=30)
    try:
        m.login(ALICE, PASSWORD)
        assert m.select("INBOX", readonly=True)[0] == "OK"
        assert m.uid("SEARCH", None, "SUBJECT", "parts")[1][0].split() == [b"1"]
    finally:
        m.logout()
    assert snapshot(s) == before


# ---- heat checkpoints and `strata tier rebuild` ------------------------------------------

def fast_set(s):
    return {bytes(r[0]) for r in s.query("SELECT msgid FROM blobs WHERE tier = 0")}


def uid_msgids(s, address=ALICE):
    rows = s.query("SELECT m.uid, b.msgid FROM messages m JOIN blobs b ON b.id = m.blob_id"
                   " JOIN mailboxes mb ON mb.id = m.mailbox_id JOIN accounts a ON a.id = mb.account_id"
                   " WHERE a.address = ? AND mb.name = 'INBOX'", (address,))
    return {uid: bytes(mid) for uid, mid in rows}


def peek_reads(s, uids, times, address=ALICE):
    """Body reads that leave \\Seen alone (priors unchanged), `times` each."""
    m = imaplib.IMAP4("127.0.0.1", s.imap_port, timeout=30)
    try:
        m.login(address, PASSWORD)
        assert m.select("INBOX", readonly=True)[0] == "OK"
        for _ in range(times):
            for uid in uids:
                assert m.uid("FETCH", str(uid), "(BODY.PEEK[])")[0] == "OK"
    finally:
        m.logout()


def ckpt_dir(s):
    return os.path.join(s.state_dir, "t-archive", "tier-heat")


def ckpt_files(s):
    d = ckpt_dir(s)
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith("heat-")) if os.path.isdir(d) else []


def corrupt(path):
    """Damages a checkpoint for good (twice is still damaged): one byte less."""
    os.truncate(path, os.path.getsize(path) - 1)


def drop_heat_table(s):
    db = sqlite3.connect(os.path.join(s.state_dir, "index.db"), timeout=10)
    try:
        db.execute("DROP TABLE heat")
        db.commit()
    finally:
        db.close()


def settle_fast(s, cap):
    """Waits until the fast tier is within its target and stays unchanged for
    several mover passes; returns its set of blobs."""
    wait_until(lambda: (tier_bytes(s).get(0) or 0) <= cap, 30 * harness.SLOW, what="fast tier within target")
    last, stable_since = None, time.time()
    deadline = time.time() + 30 * harness.SLOW
    while time.time() < deadline:
        cur = fast_set(s)
        if cur != last:
            last, stable_since = cur, time.time()
        elif time.time() - stable_since > 1.5:
            return cur
        time.sleep(0.2)
    raise AssertionError("fast tier never settled")


def test_heat_checkpoints_and_tier_rebuild(strata_factory):
    """Heat survives the loss of the heat table, of the newest checkpoint,
    and of both: the daemon rebuilds the tier state at start, every message
    stays readable, and after the next mover pass the fast tier holds the
    same messages.  Tolerance: every hot message is on the fast tier before
    and after, and at most one other message differs (the last slot under
    the target goes to the warmest cold message, ranked by priors)."""
    cap = 12 * 1024
    s = new_tiered(strata_factory, fast_cap="10M", std_cap="10M",
                   extra={"tier.checkpoint_interval": "1s", "store.backup_interval": "0"})
    deliver_many(s, 16, size=2000)
    ids = uid_msgids(s)
    hot_uids = sorted(ids)[1::3]
    hot = {ids[u] for u in hot_uids}
    peek_reads(s, hot_uids, 6)
    wait_until(lambda: s.query("SELECT count(*), min(score) > 5.9 FROM heat")[0] == (len(hot), 1),
               10 * harness.SLOW, what="heat rows of the hot messages")
    out = s.cli("tier", "checkpoint").stdout
    assert "heat checkpoint %s/heat-" % ckpt_dir(s) in out and ": %d row(s)" % len(hot) in out, out
    before = snapshot(s)

    def pressure():
        s.stop()
        s.cli("tier", "move", "--account", ALICE, "--to", "fast")
        assert tier_counts(s) == {0: 16}
        s.options["tier.fast.capacity"] = "12k"
        s.start()
        got = settle_fast(s, cap)
        assert snapshot(s) == before
        return got

    fast_before = pressure()
    assert hot <= fast_before, "hot messages demoted"
    assert len(fast_before) < 16

    def check(label):
        got = pressure()
        assert hot <= got, label
        assert len(got ^ fast_before) <= 2, (label, len(got ^ fast_before))
        assert imap_fetch_all(s) == before
        verify_clean(s)

    # 1. the heat table is lost
    s.stop()
    drop_heat_table(s)
    check("heat table dropped")
    assert "rebuilding the tier state" in s.read_log()
    # 2. the newest checkpoint is corrupt (the heat table is fine): ignored,
    #    and replaced by the next periodic checkpoint
    s.stop()
    newest = ckpt_files(s)[-1]
    corrupt(newest)
    check("newest checkpoint corrupt")
    wait_until(lambda: ckpt_files(s)[-1] > newest, 10 * harness.SLOW, what="a new checkpoint")
    # 3. both: the rebuild takes the newest checkpoint that is valid
    s.stop()
    drop_heat_table(s)
    corrupt(ckpt_files(s)[-1])
    check("heat table dropped and newest checkpoint corrupt")
    assert "trying an older one" in s.read_log()
    # 4. everything lost: priors only; the daemon still starts, mail is intact
    s.stop()
    drop_heat_table(s)
    for p in ckpt_files(s):
        corrupt(p)
    got = pressure()
    # without heat the hot messages are not told apart (what makes 1-3 meaningful)
    assert not hot <= got, "priors alone kept every hot message"
    assert sum(len(before[u]) for u in before if ids[u] in got) <= cap
    assert "no valid heat checkpoint" in s.read_log()
    assert imap_fetch_all(s) == before


def test_tier_rebuild_cli_takes_placement_from_the_files(strata_factory):
    s = new_tiered(strata_factory, imap=False, fast_cap="10M", std_cap="10M")
    deliver_many(s, 6)
    before = snapshot(s)
    s.cli("tier", "move", "--account", ALICE, "--to", "archive")
    s.stop()
    db = sqlite3.connect(os.path.join(s.state_dir, "index.db"), timeout=10)
    try:
        db.execute("UPDATE blobs SET tier = 0")       # the index forgot the moves
        db.commit()
    finally:
        db.close()
    r = s.cli("tier", "verify", rc=1)
    assert "missing on tier fast" in r.stdout
    r = s.cli("tier", "rebuild")
    assert "6 blob(s): 6 placement(s) corrected from the files" in r.stdout, r.stdout
    assert tier_counts(s) == {2: 6}
    verify_clean(s)
    s.start()
    assert snapshot(s) == before


# ---- read shares ---------------------------------------------------------------------------

def test_tier_status_without_read_shares_still_works(strata_factory):
    s = new_tiered(strata_factory, imap=False, fast_cap="10M", std_cap="10M")
    out = s.cli("tier", "status").stdout
    assert "read shares" in out or "body reads served" in out, out
    s.stop()
    assert "read shares: the daemon is not running" in s.cli("tier", "status").stdout


def test_read_shares_per_tier(strata_factory):
    """Three body reads on the fast tier and one on the archive: `strata tier
    status` shows 75% / 25% for the last hour and day and the mover's
    back-off state, and /metrics counts strata_tier_reads_total per tier."""
    s = new_tiered(strata_factory, fast_cap="10M", std_cap="10M")
    deliver_many(s, 3)
    deliver_many(s, 1, rcpt=BOB)
    s.cli("tier", "move", "--account", BOB, "--to", "archive")
    peek_reads(s, sorted(uid_msgids(s)), 1)
    peek_reads(s, sorted(uid_msgids(s, BOB)), 1, address=BOB)
    wait_until(lambda: s.query("SELECT count(*) FROM heat")[0][0] == 4, 10 * harness.SLOW, what="heat flush")
    out = s.cli("tier", "status").stdout
    assert "body reads served" in out, out
    rows = {l.split()[1]: l for l in out.splitlines()[out.splitlines().index(
        [l for l in out.splitlines() if l.startswith("body reads served")][0]) + 2:]}
    assert rows["fast"].count("75.0% (3)") == 2, out
    assert rows["archive"].count("25.0% (1)") == 2, out
    assert rows["standard"].split()[2:] == ["0.0%", "(0)", "0.0%", "(0)"], out
    # the back-off: nothing slowed the mover down
    assert "mover budget: 100% of tier.move_rate (" in out, out
    m = s.metrics()
    assert m.get('strata_tier_reads_total{tier="fast"}') == 3, m
    assert m.get('strata_tier_reads_total{tier="archive"}') == 1, m
    assert m.get('strata_tier_reads_total{tier="standard"}') == 0, m
