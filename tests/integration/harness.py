"""
harness.py - drives a real `strata serve` and the `strata` admin CLI.

Owns: starting the daemon on free loopback ports with a private state
directory, waiting until it answers (SMTP banner and /health), stopping it
(SIGTERM, SIGKILL, restart on the same state), the CLI helper, a raw SMTP
client that reads replies exactly, and read-only inspection of the state
directory (index.db through sqlite3, blob files on disk).

Invariants the fixtures rely on:
  - every process started here writes stderr to a file that is scanned for
    sanitizer reports; a report fails the test (the suite also runs against
    an AddressSanitizer/UBSan build);
  - every wait is bounded (scaled up under ASan), never a bare sleep loop;
  - the state directory's parents are traversable (0755) because a root-
    started daemon switches to the unprivileged user `strata`.
"""
import os
import random
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _default_bin():
    return os.path.join(REPO, "build", "strata")


STRATA_BIN = os.path.abspath(os.environ.get("STRATA_BIN") or _default_bin())


def _binary_has_asan(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# STRATA_ASAN=1 is set by `make test` for the sanitizer pass; the binary
# itself is checked too so that a hand-run ASan pass never asserts timings.
ASAN = os.environ.get("STRATA_ASAN") == "1" or _binary_has_asan(STRATA_BIN)
# Time scale for bounded waits: sanitizer builds run several times slower.
SLOW = 4.0 if ASAN else 1.0

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "LeakSanitizer",
    "ERROR: ThreadSanitizer",
    "WARNING: ThreadSanitizer",
)

IS_ROOT = os.geteuid() == 0
HOSTNAME = "mx.strata.test"
CRLF = b"\r\n"


class StrataError(AssertionError):
    pass


def sanitizer_report(text):
    """Returns the first sanitizer marker line in text, or None."""
    for line in text.splitlines():
        for marker in SANITIZER_MARKERS:
            if marker in line:
                return line
    return None


def proc_env(extra=None):
    env = dict(os.environ)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


# Listening ports for the daemons come from below the kernel's ephemeral
# range (net.ipv4.ip_local_port_range, 32768-60999 by default): a port
# taken from that range by binding to port 0 can be given to some outgoing
# connection (the relay's, a client's) before the daemon binds it, and the
# daemon then fails to start with "Address already in use".
_PORT_LOW, _PORT_HIGH = 20000, 32000
_handed_out = []


def free_port():
    """A port of 127.0.0.1 outside the ephemeral range, free right now and
    not handed out recently (the last 256), so that a daemon's several
    ports never collide."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(_PORT_LOW, _PORT_HIGH)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.append(port)
        del _handed_out[:-256]
        return port
    raise RuntimeError("free_port: no free port in %d-%d" % (_PORT_LOW, _PORT_HIGH))


def make_traversable(path):
    """chmod 0755 (mkdtemp makes 0700 directories, which the daemon, once it
    runs as `strata`, could not traverse to reach its state directory)."""
    os.chmod(path, 0o755)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise StrataError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# --------------------------------------------------------------------------
# raw SMTP client
# --------------------------------------------------------------------------

class Reply:
    """One SMTP reply: code, the enhanced status code if any, and its lines."""

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines                      # text after "NNN-" / "NNN "
        first = lines[0] if lines else ""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", first)
        self.enhanced = m.group(1) if m else None

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "Reply(%d %r)" % (self.code, self.lines)


class RawSMTP:
    """A byte-exact SMTP client over a plain (or later TLS) socket."""

    def __init__(self, port, host="127.0.0.1", timeout=None):
        self.timeout = timeout if timeout is not None else 10 * SLOW
        self.sock = socket.create_connection((host, port), timeout=self.timeout)
        self.buf = b""
        self.closed = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def read_line(self):
        """One reply line without CRLF, or None at EOF."""
        while b"\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise StrataError("reply line longer than 64 KiB: %r" % self.buf[:200])
            if not self._fill():
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """Reads one (possibly multi-line) reply.  Raises at EOF."""
        lines = []
        code = None
        while True:
            line = self.read_line()
            if line is None:
                raise StrataError("connection closed while reading a reply (got %r so far, "
                                  "buffer %r)" % (lines, self.buf))
            text = line.decode("utf-8", "replace")
            m = re.match(r"(\d{3})([ -])(.*)$", text) or re.match(r"(\d{3})()$", text)
            if not m:
                raise StrataError("malformed reply line %r" % text)
            c = int(m.group(1))
            if code is not None and c != code:
                raise StrataError("reply code changed inside a multi-line reply: %r" % text)
            code = c
            lines.append(m.group(3))
            if m.group(2) != "-":
                return Reply(code, lines)

    def reply_or_eof(self):
        """A reply, or None if the server closed the connection first."""
        try:
            return self.reply()
        except StrataError:
            if self.closed:
                return None
            raise
        except (socket.timeout, OSError):
            return None

    def cmd(self, line):
        self.send(line.encode() + CRLF if isinstance(line, str) else line + CRLF)
        return self.reply()

    def expect(self, line, code, enhanced=None):
        r = self.cmd(line)
        check_reply(r, code, enhanced, what=line)
        return r

    def banner(self):
        r = self.reply()
        check_reply(r, 220, what="banner")
        return r

    def ehlo(self, name="client.example"):
        r = self.cmd("EHLO " + name)
        check_reply(r, 250, what="EHLO")
        return r

    def at_eof(self, timeout=None):
        """True if the server closes the connection within timeout."""
        self.sock.settimeout(timeout if timeout is not None else 5 * SLOW)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    return True
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def starttls(self):
        """STARTTLS without certificate verification (self-signed)."""
        self.expect("STARTTLS", 220)
        if self.buf:
            raise StrataError("server sent data after 220 to STARTTLS: %r" % self.buf)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=HOSTNAME)
        return self.sock.version()

    def send_message(self, sender, rcpts, data, ehlo=True):
        """A whole transaction; data is the message (CRLF lines, ends with
        CRLF), dot-stuffed here.  Returns the final Reply."""
        if ehlo:
            self.ehlo()
        self.expect("MAIL FROM:<%s>" % sender, 250)
        for r in rcpts:
            self.expect("RCPT TO:<%s>" % r, 250)
        self.expect("DATA", 354)
        self.send(dot_stuff(data) + b".\r\n")
        return self.reply()


def check_reply(r, code, enhanced=None, what=""):
    if r is None:
        raise StrataError("%s: expected %d, connection closed" % (what, code))
    if r.code != code or (enhanced is not None and r.enhanced != enhanced):
        raise StrataError("%s: expected %d %s, got %d %r" % (what, code, enhanced or "", r.code, r.lines))


def dot_stuff(data):
    if isinstance(data, str):
        data = data.encode()
    if not data.endswith(CRLF):
        raise ValueError("message data must end with CRLF")
    lines = data.split(CRLF)
    return CRLF.join(b"." + l if l.startswith(b".") else l for l in lines)


QUEUED_RE = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-HJKMNP-TV-Z]{26})$")


def queued_id(r):
    """The queue id from '250 2.0.0 Ok: queued as <id>' (asserts the form)."""
    check_reply(r, 250, "2.0.0", what="end of data")
    m = QUEUED_RE.match(r.lines[0])
    if not m:
        raise StrataError("end-of-data reply is not '250 2.0.0 Ok: queued as <26-char id>': %r"
                          % r.lines)
    return m.group(1)


_seq = [0]


def make_message(subject=None, body=None, size=None, sender="sender@remote.example",
                 to="rcpt@local.example"):
    """A unique RFC 5322 message with CRLF line ends, ending with CRLF.  With
    size, the body is padded with 72-column lines to about size bytes."""
    _seq[0] += 1
    tag = "%d.%d.%d" % (os.getpid(), int(time.time() * 1000), _seq[0])
    subject = subject or "test " + tag
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@test.example>\r\n"
            "Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n" % (sender, to, subject, tag)).encode()
    if body is None:
        body = "Hello %s.\r\n" % tag
    if isinstance(body, str):
        body = body.encode()
    data = head + body
    if size is not None and size > len(data):
        line = b"x" * 70 + CRLF
        data += line * ((size - len(data)) // len(line))
    return data



class LineClient:
    """A CRLF line client over one TCP connection to 127.0.0.1: the common
    part of the suite's raw IMAP and POP3 clients (exact replies, hostile
    input).  Reads the greeting line on connect."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; pending %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def until_tagged(self, tag):
        """IMAP: lines up to and including the tagged reply for `tag`."""
        lines = []
        for _ in range(100000):
            ln = self.line()
            lines.append(ln)
            if ln.startswith(tag + " "):
                return lines
        raise AssertionError("no tagged reply for %s" % tag)

# --------------------------------------------------------------------------
# the daemon
# --------------------------------------------------------------------------

_shared_hash = []


def shared_hash():
    """One {SHA512-CRYPT} hash of "secret-pw" (openssl passwd -6), made once."""
    if not _shared_hash:
        h = subprocess.run(["openssl", "passwd", "-6", "-salt", "stratasuite", "secret-pw"],
                           capture_output=True, text=True, check=True).stdout.strip()
        _shared_hash.append("{SHA512-CRYPT}" + h)
    return _shared_hash[0]


class Strata:
    """One `strata serve` with its own state directory, ports and log."""

    def __init__(self, root, name="strata", options=None, config_text=None):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        make_traversable(self.dir)
        self.state_dir = os.path.join(self.dir, "state")
        self.smtp_port = free_port()
        self.admin_port = free_port()
        self.config_path = os.path.join(self.dir, "strata.conf")
        with open(self.config_path, "w") as f:
            f.write(config_text or "# written by the integration suite\n")
        os.chmod(self.config_path, 0o644)
        self.options = {
            "state_dir": self.state_dir,
            "smtp.listen": "127.0.0.1:%d" % self.smtp_port,
            "admin.listen": "127.0.0.1:%d" % self.admin_port,
            "threads": "2",
            "hostname": HOSTNAME,
            "log.level": "info",
            "guard.nft.enabled": "no",   # test_guard_nft.py turns it on in its own namespaces
            # The suite's own clients connect from 127.0.0.1 in quick bursts;
            # the guard's limits are tested from other 127.x sources.
            "guard.allow": "127.0.0.1",
        }
        if IS_ROOT:
            self.options["user"] = "strata"
        self.options.update(options or {})
        self.proc = None
        self.starts = 0
        self.log_path = None
        self.logs = []          # every log file of this instance, in start order
        self.checked = set()    # logs already checked for sanitizer reports

    # ---- command lines ----------------------------------------------------
    def opt_args(self):
        args = ["-c", self.config_path]
        for k, v in self.options.items():
            args += ["-o", "%s=%s" % (k, v)]
        return args

    def cli_cmd(self, *args):
        return [STRATA_BIN] + self.opt_args() + [str(a) for a in args]

    def cli(self, *args, input=None, rc=0, timeout=None):
        """Runs `strata <opts> args...`; asserts the exit code (None: any) and
        the absence of sanitizer reports.  Returns CompletedProcess (text)."""
        cmd = self.cli_cmd(*args)
        if isinstance(input, str):
            input = input.encode()
        p = subprocess.run(cmd, input=input, capture_output=True, env=proc_env(),
                           timeout=timeout or 120 * SLOW)
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        res = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        res.stdout_bytes = p.stdout
        bad = sanitizer_report(err)
        if bad:
            raise StrataError("sanitizer report from %s:\n%s" % (" ".join(args), err))
        if rc is not None and p.returncode != rc:
            raise StrataError("`strata %s` exited %d, expected %d\nstdout:\n%s\nstderr:\n%s"
                              % (" ".join(str(a) for a in args), p.returncode, rc, out, err))
        return res

    # ---- life cycle --------------------------------------------------------
    def start(self, wait=True, env=None):
        assert self.proc is None, "already running"
        self.starts += 1
        self.log_path = os.path.join(self.dir, "serve.%d.log" % self.starts)
        self.logs.append(self.log_path)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen([STRATA_BIN, "serve"] + self.opt_args(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=proc_env(env),
                                         start_new_session=True)
        finally:
            log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=None):
        timeout = timeout or 10 * SLOW

        def ready():
            if self.proc.poll() is not None:
                raise StrataError("strata serve exited %d during start-up:\n%s"
                                  % (self.proc.returncode, self.log_tail()))
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2 * SLOW) as s:
                    s.settimeout(2 * SLOW)
                    data = b""
                    while b"\r\n" not in data:
                        chunk = s.recv(1024)
                        if not chunk:
                            return False
                        data += chunk
                    if not data.startswith(b"220 "):
                        raise StrataError("unexpected banner %r" % data)
                    s.sendall(b"QUIT\r\n")
            except (ConnectionRefusedError, socket.timeout, ConnectionResetError):
                return False
            try:
                return self.http_get("/health")[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, timeout, interval=0.1, what="strata serve to answer SMTP and /health")
        except StrataError:
            self.kill()
            raise

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=None, expect_rc=0):
        """Signals the daemon once (a second SIGTERM means "exit at once")
        and checks its exit code and log."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout, expect_rc)

    def wait_exit(self, timeout=None, expect_rc=0):
        """Waits for a daemon already told to stop; checks exit code and log."""
        timeout = timeout or 20 * SLOW
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise StrataError("strata serve did not exit within %.0fs of being told to stop:\n%s"
                              % (timeout, self.log_tail()))
        self.proc = None
        self.check_log()
        if expect_rc is not None and rc != expect_rc:
            raise StrataError("strata serve exited %d (expected %d):\n%s" % (rc, expect_rc, self.log_tail()))
        return rc

    def kill(self):
        """SIGKILL: no clean-up runs in the daemon (a crash or power cut)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def check_log(self):
        """Fails on a sanitizer report in any log of this instance (logs of
        stopped runs are checked once; the live one every time)."""
        for path in self.logs:
            if path in self.checked or not os.path.exists(path):
                continue
            text = self.read_log(path)
            if not (self.running() and path == self.log_path):
                self.checked.add(path)
            bad = sanitizer_report(text)
            if bad:
                raise StrataError("sanitizer report in %s: %s\n%s" % (path, bad, text[-20000:]))

    def read_log(self, path=None):
        with open(path or self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=150):
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no log)"
        return "\n".join(self.read_log().splitlines()[-n:])

    # ---- admin HTTP ---------------------------------------------------------
    def http_get(self, path):
        url = "http://127.0.0.1:%d%s" % (self.admin_port, path)
        try:
            with urllib.request.urlopen(url, timeout=5 * SLOW) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self):
        """/metrics through curl (as an operator would), parsed to a dict."""
        out = subprocess.run(["curl", "-sS", "--max-time", str(int(10 * SLOW)), "-f",
                              "http://127.0.0.1:%d/metrics" % self.admin_port],
                             capture_output=True, text=True, check=True).stdout
        return parse_metrics(out)

    # ---- SMTP ----------------------------------------------------------------
    def smtp(self, banner=True):
        c = RawSMTP(self.smtp_port)
        if banner:
            c.banner()
        return c

    def deliver(self, rcpts, data=None, sender="sender@remote.example"):
        """Sends one message on a fresh connection; returns (queue_id, data)."""
        data = data if data is not None else make_message(to=rcpts[0])
        with self.smtp() as c:
            r = c.send_message(sender, rcpts, data)
            qid = queued_id(r)
            c.expect("QUIT", 221)
        return qid, data

    # ---- state inspection ---------------------------------------------------
    def db(self):
        """A read-only connection to the index (white-box checks only)."""
        path = os.path.join(self.state_dir, "index.db")
        return sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)

    def query(self, sql, args=()):
        con = self.db()
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def blob_row(self, qid):
        """(refcount, size) of the blob row for a queue id, or None."""
        rows = self.query("SELECT refcount, size FROM blobs WHERE msgid = ?", (qid_to_msgid(qid),))
        return rows[0] if rows else None

    def message_refs(self, qid):
        """Message rows (in any mailbox) that name the blob of a queue id."""
        return self.query("SELECT COUNT(*) FROM messages m JOIN blobs b ON b.id = m.blob_id "
                          "WHERE b.msgid = ?", (qid_to_msgid(qid),))[0][0]

    def referenced_blobs(self):
        """Queue ids of every blob some message names."""
        return {msgid_to_qid(bytes(m)) for (m,) in self.query(
            "SELECT DISTINCT b.msgid FROM messages m JOIN blobs b ON b.id = m.blob_id")}

    def blob_path(self, qid):
        return os.path.join(self.state_dir, "blobs", qid[0:5], qid[5:7], qid)

    def blob_files(self):
        """Every blob file outside blobs/tmp."""
        top = os.path.join(self.state_dir, "blobs")
        found = []
        for d, dirs, files in os.walk(top):
            if os.path.relpath(d, top).split(os.sep)[0] == "tmp":
                continue
            found += [os.path.join(d, f) for f in files if re.fullmatch(r"[0-9A-Z]{26}", f)]
        return found

    def tmp_files(self):
        top = os.path.join(self.state_dir, "blobs", "tmp")
        if not os.path.isdir(top):
            return []
        return os.listdir(top)

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    # ---- CLI convenience ------------------------------------------------------
    def add_domain(self, domain):
        self.cli("domain", "add", domain)

    def add_user(self, address, password=None, quota_bytes=None, quota_messages=None):
        """Adds an account.  Without a password it gets the suite's shared
        pre-computed hash (Argon2id hashing is deliberately slow, and the
        --password-stdin path has its own tests)."""
        args = ["user", "add", address]
        if password is None:
            args += ["--password-hash", shared_hash()]
        else:
            args += ["--password-stdin"]
        if quota_bytes is not None:
            args += ["--quota-bytes", str(quota_bytes)]
        if quota_messages is not None:
            args += ["--quota-messages", str(quota_messages)]
        self.cli(*args, input=None if password is None else password + "\n")

    def mail_uids(self, address, mailbox=None):
        """UIDs listed by `strata mail list ADDRESS [MAILBOX]`."""
        args = ["mail", "list", address] + ([mailbox] if mailbox else [])
        return parse_mail_list(self.cli(*args).stdout)

    def mail_cat(self, address, uid, mailbox=None):
        args = ["mail", "cat", address, str(uid)] + ([mailbox] if mailbox else [])
        return self.cli(*args).stdout_bytes

    def mailbox_contents(self, address, mailbox=None):
        return [self.mail_cat(address, uid, mailbox) for uid in self.mail_uids(address, mailbox)]


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def qid_to_msgid(qid):
    """26-char queue id (Crockford base32 of the 128-bit id) -> 16 bytes."""
    n = 0
    for ch in qid:
        n = n * 32 + CROCKFORD.index(ch)
    return n.to_bytes(16, "big")


def msgid_to_qid(b):
    n = int.from_bytes(b, "big")
    return "".join(CROCKFORD[(n >> (5 * (25 - d))) & 31] for d in range(26))


def parse_mail_list(text):
    """UIDs from `strata mail list`: the first column of each data row."""
    uids = []
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)\s", line + " ")
        if m:
            uids.append(int(m.group(1)))
    return uids


def parse_metrics(text):
    """Prometheus text -> {'name{labels}': float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


# --------------------------------------------------------------------------
# stored messages
# --------------------------------------------------------------------------

def split_received(stored):
    """(first header field unfolded, the rest) of a stored message."""
    if not stored.startswith(b"Received:"):
        raise StrataError("stored message does not start with Received: %r" % stored[:200])
    end = 0
    while True:
        nl = stored.index(CRLF, end)
        end = nl + 2
        if stored[end:end + 1] not in (b" ", b"\t"):
            break
    field = stored[:end]
    return field.replace(CRLF, b"").decode("utf-8", "replace"), stored[end:]


# --------------------------------------------------------------------------
# replies and headers every SMTP test checks
# --------------------------------------------------------------------------

EXPECTED_EHLO = ["PIPELINING", "SIZE 52428800", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS",
                 "SMTPUTF8", "CHUNKING"]
DATE_RE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d [+-]\d{4}"


def check_received(field, qid, tls=False):
    assert re.match(r"Received: from \S+ ", field), field
    assert "[127.0.0.1]" in field, field
    assert "by %s" % HOSTNAME in field, field
    assert re.search(r"\bwith ESMTPS\b", field) if tls else re.search(r"\bwith ESMTP\b", field), field
    assert re.search(r"\bid %s\b" % qid, field), field
    assert re.search(r";\s*%s\s*$" % DATE_RE, field), field


def stored_for(server, address, qid):
    """The stored message whose Received: header names qid (exactly one)."""
    found = []
    for raw in server.mailbox_contents(address):
        field, _ = split_received(raw)
        if re.search(r"\bid %s\b" % qid, field):
            found.append(raw)
    assert len(found) == 1, "%d messages with queue id %s in %s" % (len(found), qid, address)
    return found[0]


def imap_wire(data):
    """An imaplib FETCH response as it was on the wire (imaplib splits literals)."""
    out = b""
    for x in data:
        if isinstance(x, tuple):
            out += x[0] + b"\r\n" + x[1]
        elif x is not None:
            out += x
    return out
