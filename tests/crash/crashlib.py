"""
crashlib.py - machinery of the crash-consistency harness.

Owns: the model of what the server acknowledged (every 250 after DATA, every
APPEND/COPY/MOVE/STORE/EXPUNGE answered OK), the load generators (SMTP and
IMAP client threads) that feed it, and the checker that compares a restarted
server's index and blob files with the model.

The model is deliberately conservative.  For every account it keeps, per
message key (the Message-ID this harness puts in every message):
  must      (mailbox, uid) locations that MUST hold the message: answered
            APPENDUID/COPYUID destinations and every location seen at an
            earlier check, minus locations an IMAP operation touched;
  inbox     True while an acknowledged SMTP delivery's INBOX uid is unknown
            (the message must be in INBOX, at some uid);
  anywhere  True while the message must exist in at least one mailbox of the
            account (set by an acknowledgement, cleared by any expunge);
  flagged   locations whose \\Flagged was set by a STORE answered OK.
An operation cut short by the kill (no reply) only removes certainty: its
source location leaves `must`, and nothing is added.  Only one IMAP thread
works on an account, and it only names locations in `must`, so the model is
exact for what it asserts.  A key is never copied or moved into a mailbox
that already held it (or was ever a target for it), so "the same message
twice in one mailbox" is always a bug.

Every wait is bounded; every client thread has a request cap.
"""
import fcntl
import hashlib
import imaplib
import os
import random
import re
import signal
import subprocess
import threading
import time
import traceback

import harness
from harness import SLOW, RawSMTP, StrataError, dot_stuff, split_received

CRLF = b"\r\n"
TRAILER_TAIL = 27
TRAILER_HEAD = b"\nSTRATA-META 1\n"
DECIMAL_RE = re.compile(rb"0|[1-9][0-9]{0,18}")
KEY_RE = re.compile(rb"(?im)^Message-ID:[ \t]*<([^>\r\n]+)>")
QID_RE = re.compile(r"\bid ([0-9A-HJKMNP-TV-Z]{26})\b")
UIDSET_ITEM = re.compile(r"^(\d+)(?::(\d+))?$")
FLAG_FLAGGED, FLAG_DELETED = 4, 8
MAILBOXES = ("INBOX", "Drafts", "Archive", "Trash")
# Where a message may be copied or moved to: a DAG, so a key can reach a
# mailbox at most once through our operations.
NEXT_BOX = {"INBOX": ("Archive", "Trash"), "Drafts": ("Archive", "Trash"), "Archive": ("Trash",), "Trash": ()}
PASSWORD = "secret-pw"      # harness.shared_hash()


def digest(data):
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def env_float(name, default):
    v = os.environ.get(name)
    return float(v) if v not in (None, "") else default


# --------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------

def message_size(rng):
    """Mostly small, some medium, ~10% above the 256 KiB spill threshold."""
    r = rng.random()
    if r < 0.65:
        return rng.randint(300, 6000)
    if r < 0.90:
        return rng.randint(20000, 120000)
    return rng.randint(262144 + 1000, 700000)


def make_message(key, size, rng, to="rcpt@crash.example"):
    """A message with Message-ID <key>, CRLF lines, ending in CRLF, about
    `size` bytes.  Body lines vary (and some start with '.', so dot-stuffing
    runs) so that no two messages share content."""
    head = ("From: <load@remote.example>\r\nTo: <%s>\r\nSubject: crash %s\r\n"
            "Message-ID: <%s>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n" % (to, key, key)).encode()
    parts = [head]
    n = len(head)
    seed = rng.getrandbits(32)
    i = 0
    while n < size:
        line = ("%s%08x %06d " % ("." if i % 17 == 5 else "", seed, i)).encode()
        line += b"abcdefghijklmnopqrstuvwxyz0123456789"[: (i * 7) % 37] + CRLF
        parts.append(line)
        n += len(line)
        i += 1
    parts.append(b"end " + key.encode() + CRLF)
    return b"".join(parts)


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------

class Attempt:
    """A message some client tried to store (acknowledged or not)."""
    __slots__ = ("key", "kind", "digest", "size", "qid", "acked", "rcpts")

    def __init__(self, key, kind, data, rcpts):
        self.key, self.kind, self.rcpts = key, kind, rcpts
        self.digest = digest(data)
        self.size = len(data)
        self.qid = None
        self.acked = False


class KeyState:
    __slots__ = ("must", "inbox", "anywhere", "flagged")

    def __init__(self):
        self.must = set()
        self.inbox = False
        self.anywhere = False
        self.flagged = set()


class Account:
    def __init__(self, address):
        self.address = address
        self.keys = {}              # key -> KeyState
        self.placed = set()         # (key, mailbox) ever targeted
        self.absent = set()         # (mailbox, uid) removed by an answered operation
        self.max_uid = {}           # mailbox -> highest uid ever answered or seen
        self.uidvalidity = {}       # mailbox -> uidvalidity seen first

    def ks(self, key):
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = KeyState()
        return st

    def saw_uid(self, mailbox, uid):
        if uid > self.max_uid.get(mailbox, 0):
            self.max_uid[mailbox] = uid

    def locations(self, mailbox):
        """(key, uid) of every certain location in mailbox."""
        return [(k, uid) for k, st in self.keys.items() for (mb, uid) in st.must if mb == mailbox]


class Model:
    def __init__(self, addresses, quota_accounts=()):
        self.lock = threading.Lock()
        self.quota_accounts = set(quota_accounts)   # accounts whose quota may refuse mail
        self.accounts = {a: Account(a) for a in addresses}
        self.attempts = {}          # key -> Attempt
        self.acked_pairs = 0        # (message, recipient) pairs acknowledged, all time
        self.stats = {"smtp_250": 0, "smtp_4xx": 0, "append_ok": 0, "copy_ok": 0, "move_ok": 0,
                      "store_ok": 0, "expunge_ok": 0, "fetch_ok": 0, "uncertain": 0,
                      "quota_refused": 0}
        self.errors = []            # protocol-level violations seen during load

    def attempt(self, key, kind, data, rcpts):
        with self.lock:
            a = self.attempts[key] = Attempt(key, kind, data, rcpts)
            if kind == "smtp":
                for r in rcpts:
                    self.accounts[r].placed.add((key, "INBOX"))
            return a

    def smtp_acked(self, a, qid):
        with self.lock:
            a.qid, a.acked = qid, True
            self.stats["smtp_250"] += 1
            for r in a.rcpts:
                st = self.accounts[r].ks(a.key)
                st.inbox = True
                st.anywhere = True
                self.acked_pairs += 1

    def error(self, text):
        with self.lock:
            self.errors.append(text)

    def count(self, what, n=1):
        with self.lock:
            self.stats[what] += n


# --------------------------------------------------------------------------
# load: SMTP
# --------------------------------------------------------------------------

class SmtpLoad(threading.Thread):
    """Sends messages (1-3 recipients, sizes up to ~700 KB) until stopped,
    the server dies or `cap` transactions were made."""

    def __init__(self, srv, model, rng, tag, recipients, cap):
        super().__init__(daemon=True)
        self.srv, self.model, self.rng, self.tag = srv, model, rng, tag
        self.recipients, self.cap = recipients, cap
        self.stop = threading.Event()
        self.exc = None

    def run(self):
        n = 0
        try:
            while not self.stop.is_set() and n < self.cap:
                with RawSMTP(self.srv.smtp_port, timeout=15 * SLOW) as c:
                    c.banner()
                    c.ehlo()
                    for _ in range(self.rng.randint(1, 6)):
                        if self.stop.is_set() or n >= self.cap:
                            break
                        n += 1
                        self.one(c, n)
                    c.expect("QUIT", 221)
        except (StrataError, OSError) as e:
            self.exc = e        # expected once the server is killed
        except Exception:       # noqa: BLE001 - a harness bug must not pass silently
            self.model.error("SMTP client %s crashed:\n%s" % (self.tag, traceback.format_exc()))

    def one(self, c, n):
        rcpts = self.rng.sample(self.recipients, self.rng.randint(1, min(3, len(self.recipients))))
        key = "%s.%d@crash.test" % (self.tag, n)
        data = make_message(key, message_size(self.rng), self.rng, to=rcpts[0])
        a = self.model.attempt(key, "smtp", data, rcpts)
        c.expect("MAIL FROM:<load@remote.example>", 250)
        accepted = []
        for rcpt in rcpts:
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            if r.code == 250:
                accepted.append(rcpt)
            elif rcpt in self.model.quota_accounts and r.enhanced in ("4.2.2", "5.2.2"):
                self.model.count("quota_refused")
            else:
                self.model.error("%s: RCPT TO:<%s> answered %r" % (key, rcpt, r))
        if not accepted:
            c.expect("RSET", 250)
            return
        a.rcpts = accepted
        c.expect("DATA", 354)
        c.send(dot_stuff(data) + b".\r\n")
        r = c.reply()
        if r.code == 250:
            self.model.smtp_acked(a, harness.queued_id(r))
        elif r.enhanced in ("4.2.2", "5.2.2") and set(accepted) & self.model.quota_accounts:
            self.model.count("quota_refused")       # filled up between RCPT and the commit
        elif 400 <= r.code < 500:
            self.model.count("smtp_4xx")
            self.model.error("%s: SMTP %d %r without any fault injected" % (key, r.code, r.lines))
        else:
            self.model.error("%s: SMTP %d %r (a permanent failure for a good message)" % (key, r.code, r.lines))


# --------------------------------------------------------------------------
# load: IMAP
# --------------------------------------------------------------------------

def parse_uidset(text):
    out = []
    for part in text.split(","):
        m = UIDSET_ITEM.match(part)
        if not m:
            raise StrataError("bad uid set %r" % text)
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if hi < lo:
            lo, hi = hi, lo
        if hi - lo > 100000:
            raise StrataError("uid set range too large %r" % text)
        out.extend(range(lo, hi + 1))
    return out


def response_code(m, data, name):
    """The arguments of response code [NAME ...] from a command's reply or its
    untagged responses, or None."""
    pat = re.compile(r"\[%s ([^\]]*)\]" % name)
    pool = []
    for x in data or []:
        if isinstance(x, bytes):
            pool.append(x)
    for k, vals in m.untagged_responses.items():
        if k == name:
            pool += [b"[%s %s]" % (name.encode(), v) for v in vals if isinstance(v, bytes)]
        else:
            pool += [v for v in vals if isinstance(v, bytes)]
    for x in pool:
        mo = pat.search(x.decode("latin-1"))
        if mo:
            return mo.group(1).split()
    return None


class ImapLoad(threading.Thread):
    """One account's only IMAP client: APPEND, UID COPY/MOVE/STORE/EXPUNGE
    and FETCH on locations the model knows for certain."""

    def __init__(self, srv, model, rng, tag, address, cap):
        super().__init__(daemon=True)
        self.srv, self.model, self.rng, self.tag = srv, model, rng, tag
        self.acct = model.accounts[address]
        self.address, self.cap = address, cap
        self.stop = threading.Event()
        self.exc = None
        self.m = None
        self.selected = None
        self.n = 0

    def run(self):
        try:
            self.m = imaplib.IMAP4("127.0.0.1", self.srv.imap_port, timeout=15 * SLOW)
            self.m.login(self.address, PASSWORD)
            for _ in range(self.cap):
                if self.stop.is_set():
                    break
                self.step()
            try:
                self.m.logout()
            except (imaplib.IMAP4.error, OSError, EOFError):
                pass
        except (imaplib.IMAP4.abort, OSError, EOFError) as e:
            self.exc = e        # expected once the server is killed
        except (imaplib.IMAP4.error, StrataError) as e:
            self.model.error("%s: IMAP error %r" % (self.address, e))
        except Exception:       # noqa: BLE001 - a harness bug must not pass silently
            self.model.error("IMAP client %s crashed:\n%s" % (self.tag, traceback.format_exc()))

    # -- helpers ---------------------------------------------------------------
    def select(self, box):
        if self.selected != box:
            self.selected = None
            typ, data = self.m.select(box)
            if typ != "OK":
                raise StrataError("SELECT %s: %s %r" % (box, typ, data))
            self.selected = box

    def pick(self, box, k):
        with self.model.lock:
            locs = self.acct.locations(box)
        if not locs:
            return []
        return self.rng.sample(locs, min(k, len(locs)))

    def check_ok(self, what, typ, data, quota=False):
        """True for OK; a NO [OVERQUOTA] to an operation that adds usage on
        an account with a quota is expected and counted; anything else is a
        violation."""
        if quota and typ == "NO" and self.address in self.model.quota_accounts and any(
                b"[OVERQUOTA]" in x for x in data if isinstance(x, bytes)):
            self.model.count("quota_refused")
            return False
        if typ != "OK":
            self.model.error("%s: %s answered %s %r" % (self.address, what, typ, data))
            return False
        return True

    def uncertain(self, box, picked):
        """An operation on these locations got no reply: they may be gone."""
        with self.model.lock:
            self.model.stats["uncertain"] += 1
            for key, uid in picked:
                self.acct.ks(key).must.discard((box, uid))

    # -- one random operation -----------------------------------------------------
    def step(self):
        r = self.rng.random()
        if r < 0.30:
            self.append()
        elif r < 0.45:
            self.transfer("COPY")
        elif r < 0.60:
            self.transfer("MOVE")
        elif r < 0.72:
            self.flag()
        elif r < 0.84:
            self.expunge()
        else:
            self.fetch()

    def append(self):
        self.n += 1
        box = self.rng.choice(("INBOX", "Drafts", "Archive"))
        key = "%s.a%d@crash.test" % (self.tag, self.n)
        data = make_message(key, message_size(self.rng), self.rng, to=self.address)
        with self.model.lock:
            self.acct.placed.add((key, box))
        self.model.attempt(key, "append", data, [self.address])
        self.m.untagged_responses.clear()
        typ, resp = self.m.append(box, None, None, data)
        if not self.check_ok("APPEND", typ, resp, quota=True):
            return
        code = response_code(self.m, resp, "APPENDUID")
        if code is None or len(code) != 2:
            self.model.error("%s: APPEND OK without APPENDUID: %r" % (self.address, resp))
            return
        uidv, uid = int(code[0]), int(code[1])
        with self.model.lock:
            a = self.model.attempts[key]
            a.acked = True
            self.model.stats["append_ok"] += 1
            self.model.acked_pairs += 1
            st = self.acct.ks(key)
            st.must.add((box, uid))
            st.anywhere = True
            self.acct.saw_uid(box, uid)
            known = self.acct.uidvalidity.setdefault(box, uidv)
        if known != uidv:
            self.model.error("%s/%s: APPENDUID uidvalidity %d, expected %d" % (self.address, box, uidv, known))

    def transfer(self, op):
        src = self.rng.choice(("INBOX", "Drafts", "Archive"))
        dst = self.rng.choice(NEXT_BOX[src])
        with self.model.lock:
            cands = [(k, u) for k, u in self.acct.locations(src) if (k, dst) not in self.acct.placed]
            picked = self.rng.sample(cands, min(self.rng.randint(1, 3), len(cands))) if cands else []
            for k, _ in picked:
                self.acct.placed.add((k, dst))
        if not picked:
            return
        self.select(src)
        uids = sorted(u for _, u in picked)
        self.m.untagged_responses.clear()
        try:
            typ, resp = self.m.uid(op, ",".join(str(u) for u in uids), dst)
        except (imaplib.IMAP4.abort, OSError, EOFError):
            if op == "MOVE":
                self.uncertain(src, picked)
            else:
                self.model.count("uncertain")
            raise
        if not self.check_ok("UID %s %s -> %s" % (op, uids, dst), typ, resp, quota=(op == "COPY")):
            return
        code = response_code(self.m, resp, "COPYUID")
        if code is None or len(code) != 3:
            self.model.error("%s: UID %s OK without COPYUID: %r" % (self.address, op, resp))
            return
        srcs, dsts = parse_uidset(code[1]), parse_uidset(code[2])
        if sorted(srcs) != uids or len(dsts) != len(srcs):
            self.model.error("%s: COPYUID %r does not match the uids %r" % (self.address, code, uids))
            return
        by_uid = {u: k for k, u in picked}
        with self.model.lock:
            self.model.stats["copy_ok" if op == "COPY" else "move_ok"] += 1
            known = self.acct.uidvalidity.setdefault(dst, int(code[0]))
            for s_uid, d_uid in zip(srcs, dsts):
                st = self.acct.ks(by_uid[s_uid])
                st.must.add((dst, d_uid))
                self.acct.saw_uid(dst, d_uid)
                if (src, s_uid) in st.flagged:
                    st.flagged.add((dst, d_uid))        # COPY and MOVE keep flags
                if op == "MOVE":
                    st.must.discard((src, s_uid))
                    st.flagged.discard((src, s_uid))
                    self.acct.absent.add((src, s_uid))
        if known != int(code[0]):
            self.model.error("%s/%s: COPYUID uidvalidity %s, expected %d" % (self.address, dst, code[0], known))

    def flag(self):
        box = self.rng.choice(MAILBOXES)
        picked = self.pick(box, self.rng.randint(1, 4))
        if not picked:
            return
        self.select(box)
        uids = ",".join(str(u) for _, u in picked)
        typ, resp = self.m.uid("STORE", uids, "+FLAGS.SILENT", "(\\Flagged $Crash)")
        if self.check_ok("UID STORE %s" % uids, typ, resp):
            with self.model.lock:
                self.model.stats["store_ok"] += 1
                for k, u in picked:
                    self.acct.ks(k).flagged.add((box, u))

    def expunge(self):
        box = self.rng.choice(MAILBOXES)
        picked = self.pick(box, self.rng.randint(1, 2))
        if not picked:
            return
        self.select(box)
        uids = ",".join(str(u) for _, u in sorted(picked, key=lambda p: p[1]))
        with self.model.lock:
            for k, _ in picked:
                self.acct.ks(k).anywhere = False
        try:
            typ, resp = self.m.uid("STORE", uids, "+FLAGS.SILENT", "(\\Deleted)")
            if not self.check_ok("UID STORE \\Deleted %s" % uids, typ, resp):
                return
            typ, resp = self.m.uid("EXPUNGE", uids)
        except (imaplib.IMAP4.abort, OSError, EOFError):
            self.uncertain(box, picked)
            raise
        if self.check_ok("UID EXPUNGE %s" % uids, typ, resp):
            with self.model.lock:
                self.model.stats["expunge_ok"] += 1
                for k, u in picked:
                    st = self.acct.ks(k)
                    st.must.discard((box, u))
                    st.flagged.discard((box, u))
                    self.acct.absent.add((box, u))

    def fetch(self):
        """BODY.PEEK[] of a certain location must be the exact bytes, under load."""
        box = self.rng.choice(MAILBOXES)
        picked = self.pick(box, 1)
        if not picked:
            return
        key, uid = picked[0]
        self.select(box)
        typ, resp = self.m.uid("FETCH", str(uid), "(BODY.PEEK[])")
        if not self.check_ok("UID FETCH %d" % uid, typ, resp):
            return
        body = None
        for x in resp:
            if isinstance(x, tuple):
                body = x[1]
        if body is None:
            self.model.error("%s/%s uid %d (%s): FETCH returned no body: %r" % (self.address, box, uid, key, resp))
            return
        problem = content_problem(self.model.attempts.get(key), body, None)
        if problem:
            self.model.error("%s/%s uid %d: IMAP FETCH under load: %s" % (self.address, box, uid, problem))
        else:
            self.model.count("fetch_ok")


# --------------------------------------------------------------------------
# sequential driver (fault tests, checker self-test)
# --------------------------------------------------------------------------

class Driver:
    """Sequential SMTP deliveries and IMAP APPENDs that feed a Model."""

    def __init__(self, srv, model, rng, tag, users):
        self.srv, self.model, self.rng, self.tag = srv, model, rng, tag
        self.users = users
        self.n = 0

    def smtp(self, size, rcpts=None):
        """Returns the reply (code, enhanced) of the first non-2xx step, or (250, ...)."""
        self.n += 1
        rcpts = rcpts or self.users[:1 + self.n % len(self.users)]
        key = "%s.m%d@crash.test" % (self.tag, self.n)
        data = make_message(key, size, self.rng, to=rcpts[0])
        a = self.model.attempt(key, "smtp", data, rcpts)
        with self.srv.smtp() as c:
            try:
                c.ehlo()
                for line in ["MAIL FROM:<f@remote.example>"] + ["RCPT TO:<%s>" % r for r in rcpts]:
                    r = c.cmd(line)
                    if r.code != 250:
                        return r
                r = c.cmd("DATA")
                if r.code != 354:
                    return r
                c.send(harness.dot_stuff(data) + b".\r\n")
                r = c.reply()
                if r.code == 250:
                    self.model.smtp_acked(a, harness.queued_id(r))
                return r
            finally:
                # wait for the server to close, so that sequential
                # connections never count as concurrent ones
                try:
                    c.cmd("QUIT")
                    c.at_eof(10 * SLOW)
                except (StrataError, OSError):
                    pass

    def append(self, size, box="INBOX", user=None):
        """Returns (typ, data) of an APPEND."""
        user = user or self.users[0]
        self.n += 1
        key = "%s.a%d@crash.test" % (self.tag, self.n)
        data = make_message(key, size, self.rng, to=user)
        acct = self.model.accounts[user]
        self.model.attempt(key, "append", data, [user])
        m = imaplib.IMAP4("127.0.0.1", self.srv.imap_port, timeout=30 * SLOW)
        try:
            m.login(user, PASSWORD)
            typ, resp = m.append(box, None, None, data)
            if typ == "OK":
                code = response_code(m, resp, "APPENDUID")
                assert code is not None and len(code) == 2, resp
                with self.model.lock:
                    self.model.attempts[key].acked = True
                    self.model.acked_pairs += 1
                    st = acct.ks(key)
                    st.must.add((box, int(code[1])))
                    st.anywhere = True
                    acct.saw_uid(box, int(code[1]))
            m.logout()
            return typ, resp
        finally:
            try:
                m.shutdown()
            except OSError:
                pass



# --------------------------------------------------------------------------
# blob files
# --------------------------------------------------------------------------

def parse_blob(path):
    """(message bytes, fields) of a blob file, checked against the format in
    docs/STORAGE.md; raises ValueError with the rule that is broken."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < TRAILER_TAIL + len(TRAILER_HEAD):
        raise ValueError("file of %d bytes is too short for a trailer" % len(data))
    tail = data[-TRAILER_TAIL:]
    m = re.fullmatch(rb"STRATA-META-END (\d{10})\n", tail)
    if not m:
        raise ValueError("last 27 bytes are not an end-line: %r" % tail)
    tlen = int(m.group(1))
    if tlen < TRAILER_TAIL + len(TRAILER_HEAD) or tlen > len(data):
        raise ValueError("trailer length %d out of range (file %d)" % (tlen, len(data)))
    stored, trailer = data[:-tlen], data[-tlen:]
    if not trailer.startswith(TRAILER_HEAD):
        raise ValueError("trailer does not start with LF STRATA-META 1 LF: %r" % trailer[:40])
    body = trailer[len(TRAILER_HEAD):-TRAILER_TAIL]
    if body and not body.endswith(b"\n"):
        raise ValueError("trailer fields do not end with LF")
    fields = {"rcpt": []}
    for line in body.split(b"\n")[:-1] if body else []:
        fm = re.fullmatch(rb"([a-z][a-z0-9-]*): ([\x20-\x7e]*)", line)
        if not fm:
            raise ValueError("bad trailer line %r" % line)
        k, v = fm.group(1).decode(), fm.group(2)
        if k == "rcpt":
            fields["rcpt"].append(v.decode())
        elif k in fields:
            raise ValueError("field %s twice" % k)
        else:
            fields[k] = v
    msg = stored
    if "compress" in fields:
        # a blob on a compressed tier (docs/STORAGE.md "Compressed blobs"):
        # one zstd frame of the message bytes, decompressed with zstd(1)
        if fields["compress"] != b"zstd":
            raise ValueError("unknown compress %r" % fields["compress"])
        if "stored" not in fields or int(fields["stored"]) != len(stored):
            raise ValueError("stored %r but the frame holds %d bytes" % (fields.get("stored"), len(stored)))
        p = subprocess.run(["zstd", "-d", "-c", "-q"], input=stored, capture_output=True)
        if p.returncode != 0:
            raise ValueError("zstd frame does not decompress: %s" % p.stderr.decode(errors="replace").strip())
        msg = p.stdout
    for k in ("id", "received", "size", "hash"):
        if k not in fields:
            raise ValueError("field %s missing" % k)
    if not fields["rcpt"]:
        raise ValueError("no rcpt field")
    for k in ("received", "size"):
        if not DECIMAL_RE.fullmatch(fields[k]):
            raise ValueError("%s %r is not a decimal" % (k, fields[k]))
    if fields["id"].decode() != os.path.basename(path):
        raise ValueError("id %r is not the file name" % fields["id"])
    if int(fields["size"]) != len(msg):
        raise ValueError("size %s but %d message bytes" % (fields["size"].decode(), len(msg)))
    if not re.fullmatch(rb"[0-9a-f]{64}", fields["hash"]) or fields["hash"].decode() != digest(msg):
        raise ValueError("hash does not match the message bytes")
    return msg, fields


def message_key(msg):
    head = msg.split(b"\r\n\r\n", 1)[0]
    m = KEY_RE.search(head)
    return m.group(1).decode("latin-1") if m else None


def content_problem(a, stored, blob_qid):
    """None if stored bytes are what the attempt sent, else a description."""
    if a is None:
        return "a message no client sent (key unknown)"
    if a.kind == "append":
        if digest(stored) != a.digest:
            return "APPENDed message %s differs from the bytes sent (%d stored, %d sent)" % (
                a.key, len(stored), a.size)
        return None
    try:
        field, rest = split_received(stored)
    except (StrataError, ValueError) as e:
        return "SMTP message %s: %s" % (a.key, e)
    if digest(rest) != a.digest:
        return "SMTP message %s differs from the bytes sent (%d stored after Received, %d sent)" % (
            a.key, len(rest), a.size)
    if a.qid is not None:
        m = QID_RE.search(field)
        if not m or m.group(1) != a.qid:
            return "SMTP message %s: Received names %r, the 250 named %s" % (a.key, field, a.qid)
        if blob_qid is not None and blob_qid != a.qid:
            return "SMTP message %s is in blob %s, the 250 named %s" % (a.key, blob_qid, a.qid)
    return None


# --------------------------------------------------------------------------
# the checker
# --------------------------------------------------------------------------

class Checker:
    """Compares a stopped-load server's state with the model (invariants
    1-6 of README.md).  Keeps what it has seen across checks."""

    def __init__(self, srv, model):
        self.srv, self.model = srv, model
        self.blob_cache = {}        # path -> (size, mtime_ns, key, problem or None)
        self.orphans = set()        # blob qids seen unreferenced
        self.seen = {}              # (address, mailbox, uid) -> blob qid
        self.gone = set()           # (address, mailbox, uid) seen once, then not
        self.lost = 0

    def blob(self, path, qid):
        """(key, problem, message length) of a blob file, cached by size and
        mtime (blob files are immutable once renamed into place)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, "file missing", None
        c = self.blob_cache.get(path)
        if c and c[0] == st.st_size and c[1] == st.st_mtime_ns:
            return c[2:]
        try:
            msg, _fields = parse_blob(path)
        except (ValueError, OSError) as e:
            res = (None, "trailer: %s" % e, None)
        else:
            key = message_key(msg)
            res = (key, content_problem(self.model.attempts.get(key), msg, qid), len(msg))
        self.blob_cache[path] = (st.st_size, st.st_mtime_ns) + res
        return res

    def check(self):
        """Returns (violations, stats).  Holds the tier mover's lock meanwhile
        (docs/STORAGE.md "Tiering"), so that a running daemon's mover does
        not move blobs between the index read and the file checks."""
        lock = mover_lock(self.srv)
        try:
            return self._check()
        finally:
            if lock is not None:
                os.close(lock)

    def _check(self):
        v = []
        srv, model = self.srv, self.model
        con = srv.db()
        try:
            accounts = {r[0]: r[1:] for r in con.execute(
                "SELECT id, address, used_bytes, used_messages FROM accounts")}
            mailboxes = {r[0]: r[1:] for r in con.execute(
                "SELECT id, account_id, name, uidvalidity, uidnext FROM mailboxes")}
            blobs = {r[0]: (harness.msgid_to_qid(bytes(r[1])), r[2], r[3], r[4]) for r in con.execute(
                "SELECT id, msgid, size, refcount, tier FROM blobs")}
            messages = con.execute("SELECT mailbox_id, uid, blob_id, flags FROM messages").fetchall()
        finally:
            con.close()

        # 3. every row's blob file exists on its tier, and only there, parses,
        # and is what a client sent (the tier mover runs under the kills)
        blob_key = {}
        tiers = tier_dirs(srv)
        for bid, (qid, size, refcount, tier) in blobs.items():
            if tier >= len(tiers):
                v.append("blob %s: tier %d, but %d tiers are configured" % (qid, tier, len(tiers)))
                continue
            for t, top in enumerate(tiers):
                if t != tier and os.path.exists(blob_path_on(top, qid)):
                    v.append("blob %s: a second copy on tier %d (index says tier %d)" % (qid, t, tier))
            key, problem, msg_len = self.blob(blob_path_on(tiers[tier], qid), qid)
            if problem:
                v.append("blob %s (row %d): %s" % (qid, bid, problem))
            if msg_len is not None and msg_len != size:
                v.append("blob %s: row size %d, file holds %d message bytes" % (qid, size, msg_len))
            blob_key[bid] = key

        # 4. refcounts, and files no row names (orphans)
        refs = {}
        for mb, uid, bid, flags in messages:
            refs[bid] = refs.get(bid, 0) + 1
            if bid not in blobs:
                v.append("message (mailbox %d, uid %d) names blob row %d, which does not exist" % (mb, uid, bid))
        for bid, (qid, size, refcount, tier) in blobs.items():
            if refcount != refs.get(bid, 0):
                v.append("blob %s: refcount %d but %d message rows" % (qid, refcount, refs.get(bid, 0)))
        named = {b[0] for b in blobs.values()}
        new_orphans = 0
        for path in tier_blob_files(srv):
            qid = os.path.basename(path)
            if qid in named:
                continue
            if qid not in self.orphans:
                self.orphans.add(qid)
                new_orphans += 1
                key, problem, _ = self.blob(path, None)
                if problem and problem.startswith("trailer"):
                    v.append("orphan blob %s is not a complete blob: %s" % (qid, problem))
                a = model.attempts.get(key)
                expected = [addr for addr, acct in model.accounts.items()
                            if key in acct.keys and (acct.keys[key].must or acct.keys[key].inbox)]
                if a is not None and a.acked and expected:
                    # (an acknowledged message expunged everywhere since may
                    # legitimately be left as an orphan by a kill)
                    v.append("orphan blob %s is message %s, acknowledged and still expected in %r "
                             "(its index rows are gone)" % (qid, key, expected))
        if srv.tmp_files():
            v.append("blobs/tmp not emptied at start-up: %r" % srv.tmp_files()[:5])

        # index the present state: (address, mailbox) -> {uid: (key, flags, qid)}
        present = {}
        usage = {aid: [0, 0] for aid in accounts}
        for mb, uid, bid, flags in messages:
            aid, name, _uv, _un = mailboxes[mb]
            addr = accounts[aid][0]
            qid, size = (blobs[bid][0], blobs[bid][1]) if bid in blobs else (None, 0)
            present.setdefault((addr, name), {})[uid] = (blob_key.get(bid), flags, qid, bid)
            usage[aid][0] += size
            usage[aid][1] += 1

        # 2. no message twice in a mailbox (same blob or same Message-ID)
        for (addr, name), uids in present.items():
            by_key, by_blob = {}, {}
            for uid, (key, flags, qid, bid) in uids.items():
                if key is not None:
                    by_key.setdefault(key, []).append(uid)
                by_blob.setdefault(bid, []).append(uid)
            for key, us in by_key.items():
                if len(us) > 1:
                    v.append("%s/%s: message %s is there %d times (uids %r)" % (addr, name, key, len(us), us))
            for bid, us in by_blob.items():
                if len(us) > 1:
                    v.append("%s/%s: blob %s is there %d times (uids %r)" % (addr, name, blobs[bid][0], len(us), us))

        # 1. everything acknowledged is there
        lost_now = 0
        for addr, acct in model.accounts.items():
            in_account = {}
            for (a2, name), uids in present.items():
                if a2 == addr:
                    for uid, (key, flags, qid, bid) in uids.items():
                        in_account.setdefault(key, []).append((name, uid))
            for key, st in acct.keys.items():
                for (name, uid) in sorted(st.must):
                    got = present.get((addr, name), {}).get(uid)
                    if got is None or got[0] != key:
                        lost_now += 1
                        v.append("LOST: %s/%s uid %d should hold %s, holds %s" % (
                            addr, name, uid, key, got[0] if got else "nothing"))
                    elif (name, uid) in st.flagged and not got[1] & FLAG_FLAGGED:
                        v.append("%s/%s uid %d (%s): \\Flagged answered OK but not stored" % (addr, name, uid, key))
                locs = in_account.get(key, [])
                if st.inbox and not any(n == "INBOX" for n, _ in locs):
                    lost_now += 1
                    a = model.attempts[key]
                    v.append("LOST: %s (queue id %s, 250 given) is not in %s's INBOX (found in %r)" % (
                        key, a.qid, addr, locs))
                if st.anywhere and not locs:
                    lost_now += 1
                    v.append("LOST: %s is in no mailbox of %s" % (key, addr))
        self.lost += lost_now

        # 5. UIDs: never reused, uidnext beyond everything answered, uidvalidity fixed
        for mbid, (aid, name, uidv, uidnext) in mailboxes.items():
            addr = accounts[aid][0]
            acct = model.accounts.get(addr)
            if acct is None:
                continue
            known = acct.uidvalidity.setdefault(name, uidv)
            if known != uidv:
                v.append("%s/%s: uidvalidity changed from %d to %d" % (addr, name, known, uidv))
            uids = present.get((addr, name), {})
            top = max([acct.max_uid.get(name, 0)] + list(uids))
            if uidnext <= top:
                v.append("%s/%s: uidnext %d but uid %d was already answered or stored" % (addr, name, uidnext, top))
            for uid in uids:
                if (name, uid) in acct.absent:
                    v.append("%s/%s uid %d: expunged/moved away (answered OK) but back" % (addr, name, uid))
                loc = (addr, name, uid)
                if loc in self.gone:
                    v.append("%s/%s uid %d: gone at an earlier check, back now" % (addr, name, uid))
                old = self.seen.get(loc)
                if old is not None and old != uids[uid][2]:
                    v.append("%s/%s uid %d: was blob %s, now blob %s (UID reused)" % (addr, name, uid, old, uids[uid][2]))
                acct.saw_uid(name, uid)
        now = {(a, n, u): rec[2] for (a, n), us in present.items() for u, rec in us.items()}
        self.gone |= set(self.seen) - set(now)
        self.seen.update(now)

        # 6. quota usage equals the sums over the account's messages
        for aid, (addr, used_bytes, used_messages) in accounts.items():
            if [used_bytes, used_messages] != usage[aid]:
                v.append("%s: used_bytes/used_messages %d/%d, messages sum to %d/%d" % (
                    addr, used_bytes, used_messages, usage[aid][0], usage[aid][1]))

        # adopt what is durable now: it must stay until an operation touches it
        with model.lock:
            for (addr, name), uids in present.items():
                acct = model.accounts.get(addr)
                if acct is None:
                    continue
                for uid, (key, flags, qid, bid) in uids.items():
                    if key is None or key not in model.attempts:
                        continue
                    st = acct.ks(key)
                    st.must.add((name, uid))
                    acct.placed.add((key, name))
                    if name == "INBOX":
                        st.inbox = False
                    if flags & FLAG_FLAGGED:
                        st.flagged.add((name, uid))
        stats = {"blobs": len(blobs), "messages": len(messages), "new_orphans": new_orphans,
                 "lost": lost_now, "on_archive": sum(1 for b in blobs.values() if b[3] == 1)}
        return v, stats


# --------------------------------------------------------------------------
# one server instance with IMAP
# --------------------------------------------------------------------------

# Tiers under the kill campaign (STRATA_CRASH_TIERS=0 turns them off): a fast tier
# far too small for the load and a zstd-compressed archive tier, with the
# mover passing every 200 ms and no budget to speak of, so kills land in
# the middle of copies, renames, index updates and unlinks of moves.
CRASH_TIERS = os.environ.get("STRATA_CRASH_TIERS", "1") != "0"


def tier_options(root, name):
    return {"tier.names": "fast,archive", "tier.fast.capacity": "256K",
            "tier.archive.path": os.path.join(root, name, "state", "archive"), "tier.archive.compress": "zstd",
            "tier.interval": "200ms", "tier.move_rate": "1G", "tier.move_files": "100000"}


def tier_dirs(srv):
    """Blob directory of each tier, in order."""
    dirs = [os.path.join(srv.state_dir, "blobs")]
    if srv.options.get("tier.archive.path"):
        dirs.append(srv.options["tier.archive.path"])
    return dirs


def mover_lock(srv, timeout=60):
    """The fd holding the daemon's mover lock (flock on <tier 0>/tier.lock),
    or None without tiers or before the daemon made the file."""
    if len(tier_dirs(srv)) < 2:
        return None
    try:
        fd = os.open(os.path.join(tier_dirs(srv)[0], "tier.lock"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    deadline = time.monotonic() + timeout * SLOW
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StrataError("the tier mover lock was not free for %d s" % (timeout * SLOW))
            time.sleep(0.05)


def blob_path_on(top, qid):
    return os.path.join(top, qid[0:5], qid[5:7], qid)


def tier_blob_files(srv):
    """Every blob file on every tier (not tmp/, tier-tmp/, tier-heat/)."""
    found = []
    for top in tier_dirs(srv):
        for d, dirs, files in os.walk(top):
            if os.path.relpath(d, top).split(os.sep)[0] in ("tmp", "tier-tmp", "tier-heat"):
                continue
            found += [os.path.join(d, f) for f in files if re.fullmatch(r"[0-9A-Z]{26}", f)]
    return found


def new_server(root, name, options=None, tiers=False):
    """A server with IMAP; with `tiers`, the kill campaign's tier set-up."""
    imap_port = harness.free_port()
    # the load opens connections far faster than the connection guard lets
    # one address do by default: loopback is allowlisted
    opts = {"imap.listen": "127.0.0.1:%d" % imap_port, "guard.allow": "127.0.0.0/8"}
    if tiers:
        opts.update(tier_options(root, name))
    opts.update(options or {})
    s = harness.Strata(root, name, options=opts)
    s.imap_port = imap_port
    return s


def sigkill(srv):
    """kill -9 of the daemon itself (no clean-up runs), then reap it."""
    if srv.proc is None:
        return
    if srv.proc.poll() is None:
        os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(30)
    srv.proc = None


def imap_fetch_body(srv, address, mailbox, uid):
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30 * SLOW)
    try:
        m.login(address, PASSWORD)
        typ, data = m.select(mailbox, readonly=True)
        if typ != "OK":
            raise StrataError("EXAMINE %s: %s %r" % (mailbox, typ, data))
        typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
        if typ != "OK":
            raise StrataError("UID FETCH %d: %s %r" % (uid, typ, data))
        for x in data:
            if isinstance(x, tuple):
                return x[1]
        return None
    finally:
        try:
            m.logout()
        except (imaplib.IMAP4.error, OSError, EOFError):
            pass


def bounded_join(threads, timeout):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


def seeds():
    """The campaign's master seed (STRATA_CRASH_SEED or fresh) and its RNG."""
    seed = os.environ.get("STRATA_CRASH_SEED")
    seed = int(seed) if seed not in (None, "") else random.SystemRandom().randrange(1, 2**31)
    return seed, random.Random(seed)
