"""
powerloss.py - the power-loss model: replays a powerlog.c log over a
snapshot of the state directory and builds the file systems a power cut
may leave, then checks each against what the daemon acknowledged.

Inputs: a snapshot of the state directory taken with the daemon stopped
(`snapshot()`: a copy plus a manifest of inode numbers), and the log the
LD_PRELOAD recorder wrote while `strata serve` ran on the original
(`read_log()`).  The replay keeps, for every file and directory, its
volatile state (what the page cache holds) and its durable state, and at a
crash point after record k builds one of these file systems:

  posix   the pessimistic POSIX model: a file's data as of the START of its
          last fsync/fdatasync that completed by k; a directory's entries
          (create, rename, unlink, mkdir, link) as of the start of its own
          last completed fsync.  Nothing else survives: not a write, not a
          rename, not a new file's name, however long ago it happened.
          ext4 (data=ordered, auto_da_alloc) and xfs are kinder: their
          journals commit renames and creations in order, and ext4 flushes
          a file's data before a rename over it commits.  A program correct
          here is correct on them.
  kill9   every operation up to k: what kill -9 leaves (the page cache
          survives).
  random  the posix state plus a seeded random subset of the operations
          the posix state lacks, applied in log order, each record all or
          nothing except writes, which may be torn: only a prefix up to a
          512-byte sector boundary of the write lands.

Each state is written to a scratch directory and checked (`check_state`):
every message acknowledged before k (an SMTP 250 "queued as <id>" or an
IMAP APPENDUID) is in its mailbox with exactly the bytes sent; every blob
row's file exists and is complete; every blob file at a final path is
complete (an orphan is allowed, a half-written visible file is not); the
index passes quick_check; refcounts and quota usage match the rows.
`strata_check` goes further on chosen states: `strata store verify`, a
`strata serve` start (recovery), every message read back over IMAP.

Not modelled: a drive whose write cache acknowledges a flush it has not
done (no software can survive that; use drives with power-loss protection
or write-through), reordering inside one write below sector granularity,
file-system metadata journaling beyond directory entries and sizes (the
model's file size moves with its data), and the SQLite -shm file (rebuilt
from the WAL on the first open after a crash; see powerlog.c).
"""
import json
import os
import re
import shutil
import sqlite3
import stat
import struct

import harness
from crashlib import content_problem, parse_blob

HDR = struct.Struct("<4sIQQqqIIIIQ")
OPS = {0: "START", 1: "CREATE", 2: "WRITE", 3: "TRUNCATE", 4: "FALLOCATE", 5: "SYNC_BEGIN", 6: "SYNC_END",
       7: "RENAME", 8: "UNLINK", 9: "MKDIR", 10: "RMDIR", 11: "LINK", 12: "CLOSE", 13: "ACK", 14: "UNTRACKED"}
SYNC_DIR = 1
O_TRUNC = 0o1000
RENAME_EXCHANGE = 2
FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10
SECTOR = 512
MAX_DEPTH = 64
MODELS = ("posix", "kill9", "random")


class ModelError(Exception):
    """The log cannot be replayed faithfully (an operation the recorder
    could not follow, or one that contradicts the snapshot)."""


class Record:
    __slots__ = ("seq", "op", "ino", "off", "len", "aux", "tid", "p1", "p2", "data")

    def __repr__(self):
        extra = ""
        if self.op == "WRITE":
            extra = " off=%d len=%d" % (self.off, len(self.data))
        elif self.op in ("TRUNCATE",):
            extra = " size=%d" % self.off
        elif self.op == "SYNC_END":
            extra = " begun=%d" % self.off
        elif self.op == "ACK":
            extra = " %s" % self.p2
        paths = self.p1 + (" -> " + self.p2 if self.p2 and self.op != "ACK" else "")
        return "#%d %s %s%s" % (self.seq, self.op, paths, extra)


# --------------------------------------------------------------------------
# snapshot and log
# --------------------------------------------------------------------------

def snapshot(state_dir, snap_dir):
    """Copies state_dir (daemon stopped) to snap_dir/tree and writes
    snap_dir/manifest.json: relative path -> [kind, inode, mode].  SQLite's -shm
    is left out (powerlog.c does not follow it)."""
    tree = os.path.join(snap_dir, "tree")
    top = os.lstat(state_dir)
    manifest = {"": ["d", top.st_ino, stat.S_IMODE(top.st_mode)]}
    os.makedirs(tree)
    for d, dirs, files in os.walk(state_dir):
        rel = os.path.relpath(d, state_dir)
        rel = "" if rel == "." else rel
        for name in sorted(dirs):
            r = os.path.join(rel, name)
            os.makedirs(os.path.join(tree, r))
            st = os.lstat(os.path.join(d, name))
            manifest[r] = ["d", st.st_ino, stat.S_IMODE(st.st_mode)]
        for name in sorted(files):
            if name.endswith("-shm"):
                continue
            r = os.path.join(rel, name)
            st = os.lstat(os.path.join(d, name))
            if not stat.S_ISREG(st.st_mode):
                continue
            shutil.copyfile(os.path.join(d, name), os.path.join(tree, r))
            manifest[r] = ["f", st.st_ino, stat.S_IMODE(st.st_mode)]
    st = os.lstat(state_dir)
    with open(os.path.join(snap_dir, "manifest.json"), "w") as f:
        json.dump({"paths": manifest, "uid": st.st_uid, "gid": st.st_gid}, f)


def read_log(path):
    """Records of a powerlog.c log, in order.  A record cut short at the end
    (the daemon killed while logging) is dropped; anything else malformed
    raises ModelError."""
    out = []
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < HDR.size:
            break
        magic, op, seq, ino, off, ln, aux, tid, l1, l2, dlen = HDR.unpack_from(buf, pos)
        if magic != b"PWL1" or op not in OPS:
            raise ModelError("bad record header at byte %d" % pos)
        end = pos + HDR.size + l1 + l2 + dlen
        if end > len(buf):
            break
        r = Record()
        r.seq, r.op, r.ino, r.off, r.len, r.aux, r.tid = seq, OPS[op], ino, off, ln, aux, tid
        p = pos + HDR.size
        r.p1 = buf[p:p + l1].decode("utf-8", "surrogateescape")
        r.p2 = buf[p + l1:p + l1 + l2].decode("utf-8", "surrogateescape")
        r.data = buf[p + l1 + l2:end]
        if out and r.seq != out[-1].seq + 1:
            raise ModelError("record %d follows record %d" % (r.seq, out[-1].seq))
        out.append(r)
        pos = end
    if not out or out[0].op != "START":
        raise ModelError("log does not start with a START record")
    return out


# --------------------------------------------------------------------------
# the replay
# --------------------------------------------------------------------------

class Node:
    """A file or directory: volatile content, durable content and the
    effects not yet covered by a completed sync."""
    __slots__ = ("kind", "ino", "vol", "dur", "dur_seq", "effects", "nid", "mode")

    def __init__(self, kind, ino, content, nid, mode=None):
        self.kind, self.ino, self.nid = kind, ino, nid
        # files the daemon creates are 0600 (blobs) or 0640 (index); the
        # model keeps the snapshot's modes and uses the stricter default
        self.mode = mode if mode is not None else (0o600 if kind == "f" else 0o750)
        self.vol = content                   # bytearray | dict name -> Node
        self.dur = bytes(content) if kind == "f" else dict(content)
        self.dur_seq = 0
        self.effects = []                    # [(seq, effect)] after dur_seq


def _apply(content, eff):
    """Applies one effect to a file's bytearray or a directory's dict."""
    kind = eff[0]
    if kind == "w":
        off, data = eff[2], eff[3]
        if len(content) < off:
            content.extend(b"\0" * (off - len(content)))
        content[off:off + len(data)] = data
    elif kind == "t":
        size = eff[2]
        if size < len(content):
            del content[size:]
        else:
            content.extend(b"\0" * (size - len(content)))
    elif kind == "e":
        name, child = eff[2], eff[3]
        if child is None:
            content.pop(name, None)
        else:
            content[name] = child


class Replay:
    """Replays records in order; `advance(k)` moves the volatile and
    durable state to just after record k."""

    def __init__(self, snap_dir, records):
        with open(os.path.join(snap_dir, "manifest.json")) as f:
            man = json.load(f)
        self.uid, self.gid = man["uid"], man["gid"]
        self.records = records
        self.pos = 0
        self.nodes = []
        self.by_ino = {}
        self.pending = {}                    # begin seq -> (node, content copy)
        self.acks = []                       # (seq, kind, id)
        tree = os.path.join(snap_dir, "tree")
        paths = man["paths"]
        for rel in sorted(paths, key=lambda p: (p.count("/"), p) if p else (-1, "")):
            kind, ino, mode = paths[rel]
            if kind == "d":
                node = self._new("d", ino, {}, mode)
            else:
                with open(os.path.join(tree, rel), "rb") as f:
                    node = self._new("f", ino, bytearray(f.read()), mode)
            if rel == "":
                self.root = node
            else:
                parent, name = self._parent(rel)
                parent.vol[name] = node
                parent.dur[name] = node

    def _new(self, kind, ino, content, mode=None):
        node = Node(kind, ino, content, len(self.nodes), mode)
        self.nodes.append(node)
        if ino:
            self.by_ino[ino] = node
        return node

    # ---- names ----------------------------------------------------------------
    def lookup(self, rel):
        node = self.root
        for part in [p for p in rel.split("/") if p]:
            if node is None or node.kind != "d":
                return None
            node = node.vol.get(part)
        return node

    def _parent(self, rel):
        head, name = os.path.split(rel)
        parent = self.lookup(head)
        if parent is None or parent.kind != "d" or not name:
            raise ModelError("no directory for %r" % rel)
        return parent, name

    def _node_of(self, r, want_dir=False):
        """The node a descriptor record names: directories by path (they are
        never renamed while open), files by inode (a renamed file keeps its
        descriptor's old path)."""
        if want_dir:
            node = self.lookup(r.p1)
            if node is not None:
                return node
        node = self.by_ino.get(r.ino)
        if node is None:
            node = self.lookup(r.p1)
            if node is None:
                raise ModelError("record %r names a file the replay does not know" % r)
            if r.ino:
                node.ino = r.ino
                self.by_ino[r.ino] = node
        return node

    def _effect(self, seq, node, eff):
        _apply(node.vol, eff)
        node.effects.append((seq, eff))

    # ---- one record -------------------------------------------------------------
    def _step(self, r):
        op = r.op
        if op == "CREATE":
            parent, name = self._parent(r.p1)
            node = parent.vol.get(name)
            if node is None or (r.ino and node.ino and node.ino != r.ino):
                node = self._new("f", r.ino, bytearray())
                node.dur = b""
                self._effect(r.seq, parent, ("e", parent, name, node))
            elif r.aux & O_TRUNC:
                self._effect(r.seq, node, ("t", node, 0))
            if r.ino:
                node.ino = r.ino
                self.by_ino[r.ino] = node
        elif op == "WRITE":
            node = self._node_of(r)
            off = len(node.vol) if r.off < 0 else r.off
            self._effect(r.seq, node, ("w", node, off, r.data))
        elif op == "TRUNCATE":
            node = self.lookup(r.p1) if r.aux == 1 else self._node_of(r)
            if node is None:
                raise ModelError("truncate of an unknown file: %r" % r)
            self._effect(r.seq, node, ("t", node, r.off))
        elif op == "FALLOCATE":
            node = self._node_of(r)
            end = r.off + r.len
            if r.aux & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
                hi = min(end, len(node.vol)) if r.aux & FALLOC_KEEP_SIZE else end
                if hi > r.off:
                    self._effect(r.seq, node, ("w", node, r.off, b"\0" * (hi - r.off)))
            elif not r.aux & FALLOC_KEEP_SIZE and end > len(node.vol):
                self._effect(r.seq, node, ("t", node, end))
        elif op == "SYNC_BEGIN":
            node = self._node_of(r, want_dir=bool(r.aux & SYNC_DIR))
            snap = bytes(node.vol) if node.kind == "f" else dict(node.vol)
            self.pending[r.seq] = (node, snap)
        elif op == "SYNC_END":
            begun = self.pending.pop(r.off, None)
            if begun is None:
                raise ModelError("%r ends a sync that never began" % r)
            node, snap = begun
            if r.off > node.dur_seq:
                node.dur, node.dur_seq = snap, r.off
                node.effects = [e for e in node.effects if e[0] > r.off]
        elif op == "RENAME":
            sp, sn = self._parent(r.p1)
            dp, dn = self._parent(r.p2)
            node = sp.vol.get(sn)
            if node is None:
                raise ModelError("rename of a name the replay does not know: %r" % r)
            other = dp.vol.get(dn)
            if r.aux & RENAME_EXCHANGE:
                self._effect(r.seq, dp, ("e", dp, dn, node))
                self._effect(r.seq, sp, ("e", sp, sn, other))
            else:
                self._effect(r.seq, sp, ("e", sp, sn, None))
                self._effect(r.seq, dp, ("e", dp, dn, node))
        elif op == "LINK":
            node = self.lookup(r.p1)
            dp, dn = self._parent(r.p2)
            if node is None:
                raise ModelError("link of a name the replay does not know: %r" % r)
            self._effect(r.seq, dp, ("e", dp, dn, node))
        elif op in ("UNLINK", "RMDIR"):
            parent, name = self._parent(r.p1)
            self._effect(r.seq, parent, ("e", parent, name, None))
        elif op == "MKDIR":
            parent, name = self._parent(r.p1)
            node = self._new("d", 0, {})
            node.dur = {}
            self._effect(r.seq, parent, ("e", parent, name, node))
        elif op == "ACK":
            self.acks.append((r.seq, r.p1, r.p2))
        elif op == "UNTRACKED":
            raise ModelError("the recorder could not follow an operation: %s %s" % (r.p1, r.p2))

    def advance(self, k):
        """Replays every record with seq <= k (k never goes back)."""
        while self.pos < len(self.records) and self.records[self.pos].seq <= k:
            self._step(self.records[self.pos])
            self.pos += 1

    @property
    def at(self):
        return self.records[self.pos - 1].seq if self.pos else 0

    # ---- crash states -------------------------------------------------------------
    def view(self, model, rng=None):
        """content(node) for a crash right after the current record."""
        if model == "kill9":
            return lambda n: n.vol
        if model == "posix":
            return lambda n: n.dur
        if model != "random":
            raise ValueError(model)
        units = {}
        for n in self.nodes:
            for seq, eff in n.effects:
                units.setdefault(seq, []).append(eff)
        chosen = sorted(s for s in units if rng.random() < 0.5)
        over = {}

        def content(n):
            c = over.get(n.nid)
            if c is None:
                return n.dur
            return c

        for s in chosen:
            for eff in units[s]:
                n = eff[1]
                if n.nid not in over:
                    over[n.nid] = bytearray(n.dur) if n.kind == "f" else dict(n.dur)
                if eff[0] == "w" and len(eff[3]) > SECTOR and rng.random() < 0.3:
                    off, data = eff[2], eff[3]
                    cuts = [b - off for b in range((off // SECTOR + 1) * SECTOR, off + len(data), SECTOR)]
                    eff = ("w", n, off, data[:rng.choice(cuts)]) if cuts else eff
                _apply(over[n.nid], eff)
        return content

    def materialize(self, content, dest):
        """Writes the file system content() describes under dest (which must
        not exist)."""
        def walk(node, path, depth):
            if depth > MAX_DEPTH:
                raise ModelError("directory tree deeper than %d" % MAX_DEPTH)
            os.mkdir(path)
            os.chmod(path, node.mode)
            for name, child in sorted(content(node).items()):
                p = os.path.join(path, name)
                if child.kind == "d":
                    walk(child, p, depth + 1)
                else:
                    with open(p, "wb") as f:
                        f.write(content(child))
                    os.chmod(p, child.mode)
                if harness.IS_ROOT:
                    os.chown(p, self.uid, self.gid)
        walk(self.root, dest, 0)
        if harness.IS_ROOT:
            os.chown(dest, self.uid, self.gid)


# --------------------------------------------------------------------------
# what was acknowledged, and the offline check
# --------------------------------------------------------------------------

class Expect:
    """What an acknowledgement promises: the attempt (crashlib.Attempt) and
    where the message must be: every recipient's INBOX for SMTP, the
    account and mailbox for an APPEND."""

    def __init__(self, attempt, places):
        self.attempt = attempt
        self.places = places                 # [(address, mailbox)]


def check_state(state_dir, acked, expect):
    """Violations (strings) of a crash state.  acked: [(seq, kind, id)] of
    the acknowledgements before the crash point; expect: (kind, id) ->
    Expect.  Opens a copy of the index read-write (SQLite replays the WAL
    into its cache, as the daemon's first open would)."""
    v = []
    db = os.path.join(state_dir, "index.db")
    if not os.path.exists(db):
        return ["index.db is missing"]
    con = sqlite3.connect(db, timeout=10)
    try:
        ok = con.execute("PRAGMA quick_check").fetchall()
        if ok != [("ok",)]:
            return ["index quick_check: %r" % ok[:5]]
        accounts = {r[0]: r[1:] for r in con.execute("SELECT id, address, used_bytes, used_messages FROM accounts")}
        boxes = {r[0]: r[1:] for r in con.execute("SELECT id, account_id, name, uidvalidity FROM mailboxes")}
        blobs = {r[0]: (harness.msgid_to_qid(bytes(r[1])), r[2], r[3]) for r in con.execute(
            "SELECT id, msgid, size, refcount FROM blobs")}
        rows = con.execute("SELECT mailbox_id, uid, blob_id FROM messages").fetchall()
    except sqlite3.DatabaseError as e:
        return ["index unreadable: %s" % e]
    finally:
        con.close()

    def blob_path(qid):
        return os.path.join(state_dir, "blobs", qid[0:5], qid[5:7], qid)

    parsed = {}

    def blob(qid):
        if qid not in parsed:
            try:
                parsed[qid] = (parse_blob(blob_path(qid))[0], None)
            except FileNotFoundError:
                parsed[qid] = (None, "file missing")
            except (ValueError, OSError) as e:
                parsed[qid] = (None, "not a complete blob: %s" % e)
        return parsed[qid]

    refs, usage = {}, {}
    where = {}                               # (address, mailbox, uid) -> blob qid
    by_box_blob = {}                         # (address, mailbox) -> set of qids
    for mb, uid, bid in rows:
        refs[bid] = refs.get(bid, 0) + 1
        aid, name, _uv = boxes[mb]
        addr = accounts[aid][0]
        u = usage.setdefault(aid, [0, 0])
        if bid not in blobs:
            v.append("message %s/%s uid %d names blob row %d, which does not exist" % (addr, name, uid, bid))
            continue
        qid = blobs[bid][0]
        u[0] += blobs[bid][1]
        u[1] += 1
        where[(addr, name, uid)] = qid
        by_box_blob.setdefault((addr, name), set()).add(qid)
    for bid, (qid, size, refcount) in blobs.items():
        msg, problem = blob(qid)
        if problem:
            v.append("blob %s (row %d): %s" % (qid, bid, problem))
        elif len(msg) != size:
            v.append("blob %s: row size %d, file holds %d bytes" % (qid, size, len(msg)))
        if refcount != refs.get(bid, 0):
            v.append("blob %s: refcount %d but %d message rows" % (qid, refcount, refs.get(bid, 0)))
    for aid, (addr, used_bytes, used_messages) in accounts.items():
        if [used_bytes, used_messages] != usage.get(aid, [0, 0]):
            v.append("%s: usage %d/%d, rows sum to %r" % (addr, used_bytes, used_messages, usage.get(aid, [0, 0])))
    named = {b[0] for b in blobs.values()}
    top = os.path.join(state_dir, "blobs")
    for d, dirs, files in os.walk(top):
        if os.path.relpath(d, top).split(os.sep)[0] == "tmp":
            continue
        for f in files:
            if re.fullmatch(r"[0-9A-Z]{26}", f) and f not in named:
                _, problem = blob(f)
                if problem:
                    v.append("orphan blob file %s is visible but %s" % (f, problem))
    uvs = {(accounts[aid][0], name): uv for (aid, name, uv) in boxes.values()}
    for seq, kind, ident in acked:
        e = expect.get((kind, ident))
        if e is None:
            v.append("acknowledgement #%d %s %s matches no message the test sent" % (seq, kind, ident))
            continue
        if kind == "smtp":
            for addr, box in e.places:
                if ident not in by_box_blob.get((addr, box), ()):
                    v.append("LOST: %s (250 at record #%d) is not in %s's %s" % (ident, seq, addr, box))
            msg, problem = blob(ident)
            if problem:
                v.append("LOST: %s (250 at record #%d): blob %s" % (ident, seq, problem))
            elif content_problem(e.attempt, msg, ident):
                v.append("CORRUPT: %s (250 at record #%d): %s" % (ident, seq, content_problem(e.attempt, msg, ident)))
        else:
            uv, uid = (int(x) for x in ident.split()[:2])
            addr, box = e.places[0]
            if uvs.get((addr, box)) != uv:
                v.append("LOST: %s/%s has uidvalidity %r, APPENDUID (record #%d) said %d" % (
                    addr, box, uvs.get((addr, box)), seq, uv))
                continue
            qid = where.get((addr, box, uid))
            if qid is None:
                v.append("LOST: %s/%s uid %d (APPENDUID at record #%d) is missing" % (addr, box, uid, seq))
                continue
            msg, problem = blob(qid)
            if problem:
                v.append("LOST: %s/%s uid %d (APPENDUID at record #%d): blob %s %s" % (
                    addr, box, uid, seq, qid, problem))
            elif content_problem(e.attempt, msg, None):
                v.append("CORRUPT: %s/%s uid %d (APPENDUID at record #%d): %s" % (
                    addr, box, uid, seq, content_problem(e.attempt, msg, None)))
    return v


def trail(records, ident, limit=40):
    """The records that concern one acknowledged message (its blob's
    file, directory syncs, WAL syncs up to its ACK), for reports."""
    ack = next((r.seq for r in records if r.op == "ACK" and r.p2 == ident), None)
    inos = {r.ino for r in records if r.op in ("CREATE", "CLOSE") and r.p1.endswith(ident)}
    names = set()
    for r in records:
        if r.op == "RENAME" and r.p2.endswith(ident):
            names |= {r.p1, r.p2}
            inos |= {x.ino for x in records if x.op == "CREATE" and x.p1 == r.p1}
    out = []
    for r in records:
        if ack is not None and r.seq > ack:
            break
        if (r.ino in inos and r.ino) or r.p1 in names or r.p2 in names or r.p2 == ident or (
                r.op in ("SYNC_BEGIN", "SYNC_END") and (r.aux & SYNC_DIR or r.p1 == "index.db-wal")):
            out.append(repr(r))
    return out[-limit:]
