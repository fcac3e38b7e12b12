"""Storage tiering (docs/TIERING.md) against the real daemon: three tiers in
temporary directories with small capacities; demotion under capacity
pressure; reads over IMAP and `strata mail cat` while the mover runs;
`strata tier move`, `verify`, `status`, `policy`; SIGKILL during move bursts
(daemon and CLI), then restart: verify clean and every message
byte-identical."""
import imaplib
import os
import random
import signal
import subprocess
import time

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
