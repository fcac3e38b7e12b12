"""Power loss beyond kill -9: `strata serve` runs under the powerlog.c
recorder (LD_PRELOAD) while it takes a bounded SMTP + IMAP APPEND load,
then powerloss.py rebuilds the file systems a power cut may leave (after
every acknowledgement, every completed sync and seeded random records,
under the posix, kill9 and random models) and checks each one offline; a
few are also started with `strata serve` and read back over IMAP.  The
self-tests drop one sync from the log and expect the loss to be reported.

Knobs: STRATA_POWERLOSS_MESSAGES (60), STRATA_POWERLOSS_POINTS (random crash
points, 20), STRATA_POWERLOSS_SYNC_POINTS (completed syncs, 60; -1: every
one), STRATA_POWERLOSS_SERVE (states started with strata serve, 3),
STRATA_POWERLOSS_SEED (random), STRATA_POWERLOSS_LIB (the recorder; default
next to STRATA_BIN, else compiled here with cc)."""
import imaplib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

import harness
import powerloss
from crashlib import PASSWORD, Driver, Model, bounded_join, content_problem, env_int, message_size, new_server

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "power.example"
USERS = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN]
BOXES = ("INBOX", "Drafts", "Archive")
APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


def shim_path(root):
    lib = os.environ.get("STRATA_POWERLOG_LIB")
    if lib:
        return lib
    built = os.path.join(os.path.dirname(harness.STRATA_BIN), "tests", "crash", "powerlog.so")
    if os.path.exists(built):
        return built
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no powerlog.so next to STRATA_BIN and no C compiler to build it")
    out = os.path.join(root, "powerlog.so")
    subprocess.run([cc, "-std=c17", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out,
                    os.path.join(HERE, "powerlog.c"), "-ldl", "-lpthread"], check=True)
    return out


def serve_env(lib, state_dir, log):
    env = {"LD_PRELOAD": lib, "STRATA_POWERLOG_DIR": state_dir, "STRATA_POWERLOG_FILE": log}
    if harness.ASAN:
        # the recorder comes before the sanitizer runtime in the library list
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1") + ":verify_asan_link_order=0"
    return env


class Run:
    """One recorded run: snapshot, log, what was acknowledged."""


def load(srv, model, seed, n_messages):
    """Two SMTP threads and one IMAP APPEND thread, n_messages in all.
    Returns expect: (kind, id) -> powerloss.Expect."""
    expect = {}
    lock = threading.Lock()
    errors = []

    def smtp(tag, count, rng):
        d = Driver(srv, model, rng, tag, USERS)
        for _ in range(count):
            rcpts = rng.sample(USERS, rng.randint(1, 2))
            r = d.smtp(message_size(rng), rcpts=rcpts)
            if r.code != 250:
                errors.append("SMTP %s answered %r" % (tag, r))
                continue
            a = model.attempts["%s.m%d@crash.test" % (tag, d.n)]
            with lock:
                expect[("smtp", a.qid)] = powerloss.Expect(a, [(u, "INBOX") for u in a.rcpts])

    def imap(tag, count, rng):
        d = Driver(srv, model, rng, tag, USERS)
        for _ in range(count):
            user, box = rng.choice(USERS), rng.choice(BOXES)
            typ, resp = d.append(message_size(rng), box=box, user=user)
            m = APPENDUID_RE.search(b" ".join(x for x in resp if isinstance(x, bytes)))
            if typ != "OK" or m is None:
                errors.append("APPEND %s answered %s %r" % (tag, typ, resp))
                continue
            a = model.attempts["%s.a%d@crash.test" % (tag, d.n)]
            with lock:
                expect[("imap", "%s %s" % (m.group(1).decode(), m.group(2).decode()))] = powerloss.Expect(
                    a, [(user, box)])

    rng = random.Random(seed)
    third = n_messages // 3
    threads = [threading.Thread(target=smtp, args=("s1", third, random.Random(rng.random())), daemon=True),
               threading.Thread(target=smtp, args=("s2", third, random.Random(rng.random())), daemon=True),
               threading.Thread(target=imap, args=("i1", n_messages - 2 * third, random.Random(rng.random())),
                                daemon=True)]
    for t in threads:
        t.start()
    alive = bounded_join(threads, 300 * harness.SLOW)
    assert not alive, "load threads still running after %ds" % (300 * harness.SLOW)
    assert errors == [], errors[:5]
    assert model.errors == [], model.errors[:5]
    return expect


def record(root):
    """Snapshot, then a recorded run of the load; returns a Run."""
    r = Run()
    r.root = root
    r.seed = env_int("STRATA_POWERLOSS_SEED", random.SystemRandom().randrange(1, 2**31))
    sys.stdout.write("\npowerloss seed %d (STRATA_POWERLOSS_SEED)\n" % r.seed)
    lib = shim_path(root)
    srv = new_server(root, "recorded")
    srv.start()
    try:
        srv.add_domain(DOMAIN)
        for u in USERS:
            srv.add_user(u)
    finally:
        srv.stop()
    r.snap = os.path.join(root, "snapshot")
    os.makedirs(r.snap)
    powerloss.snapshot(srv.state_dir, r.snap)
    r.log = os.path.join(root, "power.log")
    srv.start(env=serve_env(lib, srv.state_dir, r.log))
    try:
        r.model = Model(USERS)
        r.expect = load(srv, r.model, r.seed, env_int("STRATA_POWERLOSS_MESSAGES", 60))
    finally:
        srv.stop()
    r.records = powerloss.read_log(r.log)
    return r


@pytest.fixture(scope="module")
def run(strata_bin):
    root = tempfile.mkdtemp(prefix="strata-powerloss-")
    harness.make_traversable(root)
    try:
        yield record(root)
    finally:
        if os.environ.get("STRATA_CRASH_KEEP") == "1":
            sys.stderr.write("\npowerloss state kept in %s (STRATA_CRASH_KEEP=1)\n" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------
# strata itself on a crash state
# --------------------------------------------------------------------------

def imap_messages(srv, address, problems):
    """(mailbox, uid) -> bytes of every message of an account, over IMAP;
    a refused SELECT or FETCH is appended to problems."""
    out = {}
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30 * harness.SLOW)
    try:
        m.login(address, PASSWORD)
        for box in BOXES:
            typ, data = m.select(box, readonly=True)
            if typ != "OK":
                problems.append("SELECT %s of %s: %s %r" % (box, address, typ, data))
                continue
            if int(data[0]) == 0:
                continue
            typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            if typ != "OK":
                problems.append("UID FETCH 1:* in %s/%s: %s %r" % (address, box, typ, data))
            for x in data or []:
                if isinstance(x, tuple):
                    uid = re.search(rb"UID (\d+)", x[0])
                    out[(box, int(uid.group(1)))] = x[1]
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
    return out


def verify_problems(srv):
    """`strata store verify` lines other than orphans (allowed after a crash
    between a blob's rename and its COMMIT)."""
    p = srv.cli("store", "verify", rc=None)
    return [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("orphan blob file")]


def strata_check(run, replay, content, acked, label):
    """Starts strata on the crash state: verify, serve (recovery), every
    message of every account read over IMAP and compared, verify again."""
    srv = new_server(run.root, "check-%s" % label)
    replay.materialize(content, srv.state_dir)
    v = ["verify before start: %s" % x for x in verify_problems(srv)]
    srv.start()
    try:
        got = {u: imap_messages(srv, u, v) for u in USERS}
    finally:
        srv.stop()
    for seq, kind, ident in acked:
        e = run.expect[(kind, ident)]
        for addr, box in e.places:
            found = [b for (mb, uid), b in got[addr].items() if mb == box and
                     content_problem(e.attempt, b, ident if kind == "smtp" else None) is None]
            if not found:
                v.append("LOST over IMAP: %s %s (record #%d) not in %s/%s byte for byte" % (kind, ident, seq, addr, box))
    v += ["verify after recovery: %s" % x for x in verify_problems(srv)]
    if srv.tmp_files():
        v.append("blobs/tmp not emptied by recovery: %r" % srv.tmp_files()[:3])
    if not v and os.environ.get("STRATA_CRASH_KEEP") != "1":
        shutil.rmtree(srv.dir, ignore_errors=True)
    return v


# --------------------------------------------------------------------------
# the campaign
# --------------------------------------------------------------------------

def crash_points(records, seed, n_random, n_syncs):
    """(seq, models) to test: every acknowledgement (posix and one random
    state), n_syncs seeded completed syncs, or all of them when n_syncs < 0
    (posix: the posix state changes only there, so all of them with the
    acknowledgements cover every posix state of the run), n_random seeded
    random records and the end (every model)."""
    rng = random.Random(seed)
    last = records[-1].seq
    syncs = [r.seq for r in records if r.op == "SYNC_END"]
    if 0 <= n_syncs < len(syncs):
        syncs = rng.sample(syncs, n_syncs)
    points = {s: {"posix"} for s in syncs}
    for r in records:
        if r.op == "ACK":
            points[r.seq] = {"posix", "random"}
    for s in rng.sample(range(2, last + 1), min(n_random, last - 1)):
        points.setdefault(s, set()).update(powerloss.MODELS)
    points.setdefault(last, set()).update(powerloss.MODELS)
    return sorted(points.items())


def replay_and_check(run, records, points, seed, serve_picks=()):
    """Violations of every state at every crash point, and counters."""
    replay = powerloss.Replay(run.snap, records)
    rng = random.Random(seed)
    violations = []
    stats = {"states": 0, "acked_at_risk": 0, "lost": 0, "corrupt": 0, "served": 0}
    scratch = os.path.join(run.root, "scratch")
    for k, models in points:
        replay.advance(k)
        acked = [a for a in replay.acks if a[0] <= k]
        for model in sorted(models):
            content = replay.view(model, rng)
            if os.path.exists(scratch):
                shutil.rmtree(scratch)
            replay.materialize(content, scratch)
            v = powerloss.check_state(scratch, acked, run.expect)
            if (k, model) in serve_picks:
                v += strata_check(run, replay, content, acked, "%d-%s" % (k, model))
                stats["served"] += 1
            stats["states"] += 1
            stats["acked_at_risk"] += len(acked)
            stats["lost"] += sum(1 for x in v if x.startswith("LOST"))
            stats["corrupt"] += sum(1 for x in v if not x.startswith("LOST"))
            violations += ["crash after record #%d (%s model): %s" % (k, model, x) for x in v]
    shutil.rmtree(scratch, ignore_errors=True)
    return violations, stats


def test_powerloss_campaign(run):
    log_acks = {(r.p1, r.p2) for r in run.records if r.op == "ACK"}
    assert log_acks == set(run.expect), (
        "the recorder's acknowledgements differ from the clients': only in the log %r, only seen by clients %r"
        % (sorted(log_acks - set(run.expect))[:5], sorted(set(run.expect) - log_acks)[:5]))
    points = crash_points(run.records, run.seed, env_int("STRATA_POWERLOSS_POINTS", 20),
                          env_int("STRATA_POWERLOSS_SYNC_POINTS", 60))
    rng = random.Random(run.seed)
    ack_seqs = {r.seq for r in run.records if r.op == "ACK"}
    acks = [k for k, _m in points if k in ack_seqs]
    n_serve = env_int("STRATA_POWERLOSS_SERVE", 3)
    picks = {(run.records[-1].seq, "posix")}
    picks |= {(k, "posix") for k in rng.sample(acks, min(max(n_serve - 2, 0), len(acks)))}
    random_pts = [k for k, m in points if "kill9" in m and k != run.records[-1].seq]
    if random_pts and n_serve > 1:
        picks.add((rng.choice(random_pts), "random"))
    violations, stats = replay_and_check(run, run.records, points, run.seed, picks)
    sys.stdout.write("\npowerloss: %d records, %d acknowledgements, %d crash points, %d states (%d started with "
                     "strata serve), %d acknowledged messages checked, %d lost, %d other violations\n" % (
                         len(run.records), len(log_acks), len(points), stats["states"], stats["served"],
                         stats["acked_at_risk"], stats["lost"], stats["corrupt"]))
    if violations:
        first_lost = next((re.search(r"LOST: (\S+)", x) for x in violations if "LOST: " in x), None)
        extra = ""
        if first_lost:
            extra = "\nrecords of %s:\n  %s" % (first_lost.group(1), "\n  ".join(
                powerloss.trail(run.records, first_lost.group(1))))
        pytest.fail("seed %d: %d violations:\n%s%s" % (run.seed, len(violations), "\n".join(violations[:30]), extra))


# --------------------------------------------------------------------------
# the model can fail: drop one sync and the loss must be reported
# --------------------------------------------------------------------------

def smtp_case(records):
    """(qid, ack seq, rename seq, temp-file inode, final dir) of the first
    acknowledged SMTP message."""
    ack = next(r for r in records if r.op == "ACK" and r.p1 == "smtp")
    ren = next(r for r in records if r.op == "RENAME" and r.p2.endswith(ack.p2))
    ino = next(r.ino for r in records if r.op == "CREATE" and r.p1 == ren.p1)
    return ack.p2, ack.seq, ren.seq, ino, os.path.dirname(ren.p2)


def drop_syncs(records, keep):
    """records without the SYNC_BEGIN/SYNC_END pairs keep() rejects."""
    dropped = {r.seq for r in records if r.op == "SYNC_BEGIN" and not keep(r)}
    return [r for r in records if not ((r.op == "SYNC_BEGIN" and r.seq in dropped) or
                                       (r.op == "SYNC_END" and r.off in dropped))], len(dropped)


SELF_CASES = ["intact", "blob fsync", "blob directory fsync", "WAL sync", "blob directory fsync, strata serve"]


@pytest.mark.parametrize("case", SELF_CASES)
def test_replayer_detects_missing_sync(run, case):
    qid, ack, ren, ino, final_dir = smtp_case(run.records)
    if case == "intact":
        records, n = run.records, 0
    elif case == "blob fsync":
        records, n = drop_syncs(run.records, lambda r: r.ino != ino)
    elif case.startswith("blob directory fsync"):
        records, n = drop_syncs(run.records, lambda r: not (r.p1 == final_dir and ren < r.seq < ack))
    else:
        records, n = drop_syncs(run.records, lambda r: not (r.p1 == "index.db-wal" and ren < r.seq < ack))
    assert case == "intact" or n > 0, "%s: nothing to drop before the 250 of %s at #%d" % (case, qid, ack)
    serve = case.endswith("strata serve")
    violations, stats = replay_and_check(run, records, [(ack, {"posix"})], 1,
                                         {(ack, "posix")} if serve else ())
    want = "LOST over IMAP" if serve else "LOST"
    mine = [v for v in violations if qid in v and want in v]
    if case == "intact":
        assert violations == [], violations[:10]
    else:
        assert mine, "%s dropped (%d syncs), yet the 250 of %s at #%d is not reported %r: %r" % (
            case, n, qid, ack, want, violations[:10])


# --------------------------------------------------------------------------
# the persistence models themselves, on hand-written logs
# --------------------------------------------------------------------------

def rec(seq, op, p1="", p2="", ino=0, off=0, data=b"", aux=0):
    r = powerloss.Record()
    r.seq, r.op, r.p1, r.p2, r.ino, r.off, r.len, r.aux, r.tid, r.data = seq, op, p1, p2, ino, off, 0, aux, 0, data
    return r


def synth(ops):
    """Records from (op, kwargs) pairs, numbered from 2 after a START."""
    out = [rec(1, "START")]
    for i, (op, kw) in enumerate(ops):
        out.append(rec(i + 2, op, **kw))
    return out


F = 900001          # inode of the file the logs create
CREATE_F = ("CREATE", {"p1": "d/f", "ino": F, "aux": 0o100})
WRITE_F = ("WRITE", {"p1": "d/f", "ino": F, "off": 0, "data": b"abc"})


def sync(path, ino=0, d=False):
    return [("SYNC_BEGIN", {"p1": path, "ino": ino, "aux": powerloss.SYNC_DIR if d else 0}),
            ("SYNC_END", {"p1": path, "ino": ino, "aux": powerloss.SYNC_DIR if d else 0, "off": -1})]


def fix_ends(records):
    """SYNC_END records name the SYNC_BEGIN just before them (off=-1)."""
    for i, r in enumerate(records):
        if r.op == "SYNC_END" and r.off == -1:
            r.off = next(x.seq for x in reversed(records[:i]) if x.op == "SYNC_BEGIN" and x.p1 == r.p1)
    return records


# (label, operations, {model: {path: content or None for absent}})
MODEL_CASES = [
    ("unsynced create", [CREATE_F, WRITE_F], {"posix": {"d/f": None}, "kill9": {"d/f": b"abc"}}),
    ("file fsync without directory fsync", [CREATE_F, WRITE_F] + sync("d/f", F),
     {"posix": {"d/f": None}, "kill9": {"d/f": b"abc"}}),
    ("directory fsync without file fsync", [CREATE_F, WRITE_F] + sync("d", d=True),
     {"posix": {"d/f": b""}, "kill9": {"d/f": b"abc"}}),
    ("file and directory fsynced", [CREATE_F, WRITE_F] + sync("d/f", F) + sync("d", d=True),
     {"posix": {"d/f": b"abc"}}),
    ("write during the fsync is not covered by it",
     [CREATE_F, ("SYNC_BEGIN", {"p1": "d/f", "ino": F}), WRITE_F, ("SYNC_END", {"p1": "d/f", "ino": F, "off": 3})]
     + sync("d", d=True), {"posix": {"d/f": b""}, "kill9": {"d/f": b"abc"}}),
    ("rename, directory fsynced", [("RENAME", {"p1": "d/old", "p2": "d/new"})] + sync("d", d=True),
     {"posix": {"d/old": None, "d/new": b"old"}}),
    ("rename, directory not fsynced", [("RENAME", {"p1": "d/old", "p2": "d/new"})],
     {"posix": {"d/old": b"old", "d/new": None}, "kill9": {"d/old": None, "d/new": b"old"}}),
    ("mkdir synced into its parent, entry in it not synced",
     [("MKDIR", {"p1": "d/e"})] + sync("d", d=True) + [("CREATE", {"p1": "d/e/g", "ino": F + 1, "aux": 0o100})],
     {"posix": {"d/e": "dir", "d/e/g": None}, "kill9": {"d/e/g": b""}}),
]


def read_tree(root, rel):
    p = os.path.join(root, rel)
    if os.path.isdir(p):
        return "dir"
    if not os.path.exists(p):
        return None
    with open(p, "rb") as f:
        return f.read()


@pytest.fixture
def small_snapshot(tmp_path):
    state = tmp_path / "state"
    (state / "d").mkdir(parents=True)
    (state / "d" / "old").write_bytes(b"old")
    snap = tmp_path / "snap"
    snap.mkdir()
    powerloss.snapshot(str(state), str(snap))
    return str(snap)


@pytest.mark.parametrize("label,ops,expect", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_persistence_models(small_snapshot, tmp_path, label, ops, expect):
    records = fix_ends(synth(ops))
    for model, want in expect.items():
        replay = powerloss.Replay(small_snapshot, records)
        replay.advance(records[-1].seq)
        out = str(tmp_path / ("out-" + model))
        replay.materialize(replay.view(model, random.Random(1)), out)
        got = {rel: read_tree(out, rel) for rel in want}
        assert got == want, "%s, %s model: expected %r, got %r" % (label, model, want, got)


def test_random_model_tears_writes_at_sectors(small_snapshot, tmp_path):
    data = bytes(range(256)) * 8            # 2048 bytes: 4 sectors
    records = fix_ends(synth([CREATE_F, ("WRITE", {"p1": "d/f", "ino": F, "off": 0, "data": data})]
                             + sync("d", d=True)))
    seen = set()
    for seed in range(60):
        replay = powerloss.Replay(small_snapshot, records)
        replay.advance(records[-1].seq)
        out = str(tmp_path / ("r%d" % seed))
        replay.materialize(replay.view("random", random.Random(seed)), out)
        got = read_tree(out, "d/f")
        assert got == data[:len(got)] and len(got) % powerloss.SECTOR == 0, \
            "seed %d: %d bytes, not a sector prefix of the write" % (seed, len(got))
        seen.add(len(got))
    assert 0 in seen and len(data) in seen and seen - {0, len(data)}, \
        "60 seeds gave only lengths %r: no torn write" % sorted(seen)


@pytest.mark.parametrize("label,cut,expect", [
    ("whole log", 0, None),
    ("last record cut by a kill", 5, None),
    ("bad magic", -1, "bad record header"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_read_log(tmp_path, label, cut, expect):
    def raw(seq, op, p1=b"", data=b""):
        return powerloss.HDR.pack(b"PWL1", op, seq, 0, 0, 0, 0, 0, len(p1), 0, len(data)) + p1 + data
    blob = raw(1, 0, b"/s") + raw(2, 2, b"f", b"xyz") + raw(3, 2, b"f", b"tail")
    if cut > 0:
        blob = blob[:-cut]
    elif cut < 0:
        blob = blob.replace(b"PWL1", b"PWLX", 2).replace(b"PWLX", b"PWL1", 1)
    path = tmp_path / "log"
    path.write_bytes(blob)
    if expect:
        with pytest.raises(powerloss.ModelError, match=expect):
            powerloss.read_log(str(path))
        return
    recs = powerloss.read_log(str(path))
    assert [r.seq for r in recs] == ([1, 2, 3] if cut == 0 else [1, 2]), label
    assert recs[1].data == b"xyz" and recs[1].p1 == "f"
