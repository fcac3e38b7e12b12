"""The outbound queue and the relay (docs/RELAY.md), against a real daemon.

Mail is submitted over the submission port (STARTTLS + AUTH PLAIN) to
remote recipients and delivered by the relay to SMTP sinks written here,
on 127.0.0.x only: through relay.transport, or through MX records served
by a small DNS responder (relay.dns_servers).  Nothing ever leaves the
loopback network.

Checked: delivery (one transaction per message and domain, the body byte
for byte, the queue row and the blob gone), a 4xx deferral then a retry,
a 5xx bounce in the sender's INBOX as a correct multipart/report, an
expiry bounce, a kill -9 in the middle of a delivery (the row survives,
the message is delivered again: at least once), MX preference and
fallback, the implicit MX, NXDOMAIN, and `strata queue`.
"""
import base64
import os
import re
import socket
import ssl
import struct
import subprocess
import threading

import pytest

import harness
from harness import SLOW, RawSMTP, check_reply, free_port, queued_id, wait_until
from smtp_sink import Sink

LOCAL = "local.example"
ALICE = "alice@%s" % LOCAL
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


# ---- an SMTP sink ------------------------------------------------------------

class DNS:
    """Answers from `zone`: {name: {"MX": [(pref, host)], "A": ["127.0.0.x"]}}.
    A name not in the zone is NXDOMAIN; a known name without the type gets
    an empty answer (NODATA)."""

    def __init__(self, zone):
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def encode_name(name):
        out = b""
        for label in name.rstrip(".").split("."):
            if label:
                out += bytes([len(label)]) + label.encode()
        return out + b"\0"

    @staticmethod
    def decode_name(pkt, off):
        labels = []
        while pkt[off] != 0:
            n = pkt[off]
            labels.append(pkt[off + 1:off + 1 + n].decode())
            off += 1 + n
        return ".".join(labels), off + 1

    def answer(self, pkt):
        qid, flags, qd = struct.unpack("!HHH", pkt[:6])
        name, off = self.decode_name(pkt, 12)
        qtype, qclass = struct.unpack("!HH", pkt[off:off + 4])
        question = pkt[12:off + 4]
        self.queries.append((name.lower(), qtype))
        rrs = []
        entry = self.zone.get(name.lower())
        rcode = 3 if entry is None else 0
        if entry is not None and qtype == 15:
            for pref, host in entry.get("MX", []):
                rdata = struct.pack("!H", pref) + self.encode_name(host)
                rrs.append(struct.pack("!HHHIH", 0xC00C, 15, 1, 60, len(rdata)) + rdata)
        if entry is not None and qtype == 1:
            for a in entry.get("A", []):
                rdata = socket.inet_aton(a)
                rrs.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, len(rdata)) + rdata)
        head = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(rrs), 0, 0)
        return head + question + b"".join(rrs)

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                pkt, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(pkt), addr)
            except (OSError, struct.error, IndexError, UnicodeDecodeError):
                pass

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)


# ---- helpers -------------------------------------------------------------------

def submit(s, rcpts, data, sender=ALICE):
    """Submits over 587 (STARTTLS, AUTH PLAIN as alice); returns the queue id."""
    c = RawSMTP(s.sub_port)
    try:
        c.banner()
        c.ehlo("mua.example")
        c.starttls()
        c.ehlo("mua.example")
        token = base64.b64encode(("\0%s\0%s" % (ALICE, PASSWORD)).encode()).decode()
        check_reply(c.cmd("AUTH PLAIN " + token), 235, what="AUTH")
        return queued_id(c.send_message(sender, rcpts, data, ehlo=False))
    finally:
        c.close()


def new_relay(factory, **options):
    sub_port = free_port()
    opts = {"submission.listen": "127.0.0.1:%d" % sub_port}
    opts.update({k.replace("_", ".", 1): v for k, v in options.items()})
    s = factory.new(options=opts, populate=True)
    s.sub_port = sub_port
    return s


def outbound(s, qid):
    return s.query("SELECT o.recipient, o.attempts, o.last_error FROM outbound o JOIN blobs b"
                   " ON b.id = o.blob_id WHERE b.msgid = ? ORDER BY o.id", (harness.qid_to_msgid(qid),))


RECEIVED_RE = re.compile(rb"\A(Received: [^\r\n]*\r\n([ \t][^\r\n]*\r\n)*)+\Z")


def wait_gone(s, qid, what):
    wait_until(lambda: not outbound(s, qid), 30 * SLOW, what=what)


def bounces(s):
    return [raw for raw in s.mailbox_contents(ALICE) if b"report-type=delivery-status" in raw]


def log_lines(s, qid):
    return [l for l in s.read_log().splitlines() if qid in l and " to=<" in l]


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def relay(module_factory, sink):
    return new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port, relay_retry_min="1s",
                     relay_retry_max="2s")


# ---- cases ---------------------------------------------------------------------------

def test_delivered_byte_identical_and_freed(relay, sink):
    body = "".join("line %d with a dot next\r\n.leading dot\r\n" % i for i in range(50))
    data = harness.make_message(sender=ALICE, to="x@far.example", body=body)
    rcpts = ["x@far.example", "y@far.example", "z@other.example"]
    qid = submit(relay, rcpts, data)
    blob = relay.blob_path(qid)
    wait_gone(relay, qid, "every outbound row of %s delivered" % qid)
    far = sink.for_rcpt("x@far.example")
    assert len(far) == 1, far
    helo, mail, got_rcpts, got = far[0]
    # one transaction for both recipients of far.example, one for other.example
    assert sorted(got_rcpts) == ["x@far.example", "y@far.example"], got_rcpts
    assert [m[2] for m in sink.for_rcpt("z@other.example")] == [["z@other.example"]]
    # the message as submitted, behind the Received: field submission added
    assert got.endswith(data), "the relayed message differs from the submitted one"
    assert RECEIVED_RE.match(got[:-len(data)]), got[:-len(data)]
    assert mail.startswith("MAIL FROM:<%s> SIZE=%d" % (ALICE, len(got))), mail
    assert helo == "EHLO %s" % harness.HOSTNAME, helo
    # remote-only message: the blob goes with the last row
    wait_until(lambda: not os.path.exists(blob), 10 * SLOW, what="blob file removed")
    assert relay.blob_row(qid) is None
    lines = log_lines(relay, qid)
    assert len(lines) == 3, lines
    for l in lines:
        assert re.search(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d, delay=\d+, tries=1, dsn=2\.0\.0, "
                         r"status=sent \(250 2\.0\.0 queued on the sink\)" % sink.port, l), l
    relay.cli("store", "verify")


def test_deferred_then_delivered(relay, sink):
    rcpt = "later@far.example"
    sink.plan[rcpt] = ["451 4.7.1 greylisted, try again", None]
    qid = submit(relay, [rcpt], harness.make_message(sender=ALICE, to=rcpt))
    wait_gone(relay, qid, "the deferred recipient delivered on retry")
    assert len(sink.for_rcpt(rcpt)) == 1
    lines = log_lines(relay, qid)
    assert len(lines) == 2, lines
    assert "tries=1, dsn=4.7.1, status=deferred (451 4.7.1 greylisted, try again)" in lines[0], lines[0]
    assert "tries=2, dsn=2.0.0, status=sent" in lines[1], lines[1]
    relay.cli("store", "verify")


def check_dsn(raw, rcpt, status, diag, qid):
    head, _, rest = raw.partition(b"\r\n\r\n")
    text = raw.decode("utf-8", "replace")
    assert re.search(r"(?m)^Content-Type: multipart/report; report-type=delivery-status;", text), head
    boundary = re.search(r'boundary="([^"]+)"', text).group(1)
    parts = text.split("--" + boundary)
    assert parts[-1].startswith("--"), "no closing boundary"
    ctypes = [re.search(r"Content-Type: ([^;\r\n]+)", p).group(1) for p in parts[1:-1]]
    assert ctypes == ["text/plain", "message/delivery-status", "text/rfc822-headers"], ctypes
    report = parts[2]
    assert "Reporting-MTA: dns; %s" % harness.HOSTNAME in report
    assert "X-Strata-Queue-ID: %s" % qid in report
    assert "Final-Recipient: rfc822; %s\r\n" % rcpt in report, report
    assert "Action: failed\r\n" in report
    assert "Status: %s\r\n" % status in report, report
    assert diag in report, report
    assert re.search(r"(?m)^To: <%s>\r$" % re.escape(ALICE), text)
    assert "Auto-Submitted: auto-replied" in text
    assert "Subject: " in parts[3]   # the original's header came back


def test_bounce_on_5xx(relay, sink):
    rcpt = "nobody@far.example"
    sink.plan[rcpt] = ["550 5.1.1 no such user here"]
    data = harness.make_message(sender=ALICE, to=rcpt, subject="will bounce")
    before = len(bounces(relay))
    qid = submit(relay, [rcpt], data)
    wait_gone(relay, qid, "the refused recipient bounced")
    wait_until(lambda: len(bounces(relay)) == before + 1, 10 * SLOW, what="the bounce in alice's INBOX")
    dsn = [b for b in bounces(relay) if qid.encode() in b][0]
    check_dsn(dsn, rcpt, "5.1.1", "Diagnostic-Code: smtp; 550 5.1.1 no such user here", qid)
    assert sink.for_rcpt(rcpt) == []
    assert "status=bounced (550 5.1.1 no such user here)" in log_lines(relay, qid)[0]
    relay.cli("store", "verify")


def test_expiry_bounce(module_factory, sink):
    s = new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port, relay_retry_min="1s",
                  relay_retry_max="1s", relay_max_lifetime="3s")
    rcpt = "always-later@far.example"
    sink.plan[rcpt] = ["421 4.3.2 busy"]
    qid = submit(s, [rcpt], harness.make_message(sender=ALICE, to=rcpt))
    wait_gone(s, qid, "the recipient expired")
    wait_until(lambda: bounces(s), 10 * SLOW, what="the expiry bounce")
    check_dsn(bounces(s)[0], rcpt, "4.3.2", "421 4.3.2 busy", qid)
    lines = log_lines(s, qid)
    assert any("status=deferred" in l for l in lines), lines
    assert "status=bounced, expired (421 4.3.2 busy)" in lines[-1], lines[-1]


def test_kill_during_delivery_delivers_again(module_factory):
    sink = Sink()
    try:
        s = new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port)
        rcpt = "crash@far.example"
        sink.hold.set()
        qid = submit(s, [rcpt], harness.make_message(sender=ALICE, to=rcpt))
        assert sink.holding.wait(30 * SLOW), "the relay never sent the message"
        s.kill()                 # kill -9 while the final reply is awaited
        sink.hold.clear()
        assert [r[0] for r in outbound(s, qid)] == [rcpt], "the row must survive the crash"
        s.start()
        wait_gone(s, qid, "the message delivered again after the restart")
        assert len(sink.for_rcpt(rcpt)) == 2   # at least once: the first copy may have landed
        s.cli("store", "verify")
    finally:
        sink.close()


def test_queue_cli_flush_and_delete(module_factory, sink):
    s = new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port, relay_retry_min="1h")
    rcpt, other = "cli@far.example", "gone@far.example"
    sink.plan[rcpt] = ["452 4.2.2 mailbox full", None]
    sink.plan[other] = ["452 4.2.2 mailbox full"]
    qid = submit(s, [rcpt, other], harness.make_message(sender=ALICE, to=rcpt))
    wait_until(lambda: all(r[1] == 1 for r in outbound(s, qid)) and len(outbound(s, qid)) == 2, 30 * SLOW,
               what="both recipients deferred once")
    out = s.cli("queue", "list").stdout
    lines = [l for l in out.splitlines() if qid in l]
    assert len(lines) == 2 and all("tries 1 next in" in l for l in lines), out
    assert "452 4.2.2 mailbox full" in out
    shown = s.cli("queue", "show", qid).stdout
    assert shown.count("queue id:     %s" % qid) == 2, shown
    entry = int(re.search(r"^(\d+) +%s .*<%s>$" % (qid, re.escape(other)), out, re.M).group(1))
    assert "1 entry deleted" in s.cli("queue", "delete", str(entry)).stdout
    s.cli("queue", "show", str(entry), rc=1)
    assert "1 deferred entry due now" in s.cli("queue", "flush").stdout
    wait_gone(s, qid, "the flushed entry delivered")
    assert len(sink.for_rcpt(rcpt)) == 1 and sink.for_rcpt(other) == []
    s.cli("store", "verify")


@pytest.mark.skipif(not harness.IS_ROOT, reason="MX delivery goes to port 25: needs root to bind it")
def test_mx_lookup_preference_fallback_and_nxdomain(module_factory):
    sink = Sink(host="127.0.0.77", port=25)
    dns = DNS({
        "mx.example": {"MX": [(20, "mx2.mx.example"), (10, "mx1.mx.example")]},
        "mx1.mx.example": {"A": ["127.0.0.78"]},          # nothing listens there
        "mx2.mx.example": {"A": ["127.0.0.77"]},
        "nomx.example": {"A": ["127.0.0.77"]},            # implicit MX
    })
    try:
        s = new_relay(module_factory, relay_dns_servers="127.0.0.1:%d" % dns.port, relay_connect_timeout="2s")
        qid = submit(s, ["a@mx.example", "b@nomx.example"], harness.make_message(sender=ALICE, to="a@mx.example"))
        wait_gone(s, qid, "delivery through MX and A records")
        assert len(sink.for_rcpt("a@mx.example")) == 1 and len(sink.for_rcpt("b@nomx.example")) == 1
        # the preferred MX was tried first, then the next one
        lines = log_lines(s, qid)
        assert any("to=<a@mx.example>, relay=mx2.mx.example[127.0.0.77]:25" in l for l in lines), lines
        assert ("mx.example", 15) in dns.queries and ("mx1.mx.example", 1) in dns.queries
        # no such domain: a bounce, no retry
        qid = submit(s, ["c@nxdomain.example"], harness.make_message(sender=ALICE, to="c@nxdomain.example"))
        wait_gone(s, qid, "the NXDOMAIN recipient bounced")
        wait_until(lambda: bounces(s), 10 * SLOW, what="the NXDOMAIN bounce")
        assert "Status: 5.1.2" in bounces(s)[0].decode()
    finally:
        sink.close()
        dns.close()


def test_index_loss_requeues_outbound_mail_from_the_trailer(module_factory):
    """Mail still waiting in the outbound queue survives the loss of the
    index: the rebuild at start re-queues it from its blob's trailer."""
    sink = Sink()
    try:
        s = new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port, relay_retry_min="1h")
        # a backup with the accounts but before the message: only the trailer knows its rows
        wait_until(lambda: "index backed up" in s.read_log(), 20 * SLOW, what="the start-up backup")
        s.cli("store", "backup")
        rcpt, local = "survivor@far.example", "bob@%s" % LOCAL
        sink.plan[rcpt] = ["451 4.3.0 not now", None]
        qid = submit(s, [rcpt, local], harness.make_message(sender=ALICE, to=rcpt, subject="survivor"))
        wait_until(lambda: [r[1] for r in outbound(s, qid)] == [1], 30 * SLOW, what="the recipient deferred")
        s.stop()
        for suffix in ("", "-wal", "-shm"):
            path = os.path.join(s.state_dir, "index.db" + suffix)
            if os.path.exists(path):
                os.unlink(path)
        s.start()
        assert "INDEX DAMAGED" in s.read_log()
        wait_gone(s, qid, "the re-queued recipient delivered")
        assert sink.seen[rcpt] == 2 and len(sink.for_rcpt(rcpt)) == 1   # deferred, then delivered
        assert any(b"Subject: survivor" in raw for raw in s.mailbox_contents(local))
        s.cli("store", "verify")
    finally:
        sink.close()


@pytest.fixture(scope="module")
def tls_ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("sink-tls")
    key, cert = str(d / "key.pem"), str(d / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=sink.test"],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_starttls_when_offered(module_factory, tls_ctx):
    sink = Sink(tls_ctx=tls_ctx)
    try:
        s = new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port)
        rcpt = "tls@far.example"
        qid = submit(s, [rcpt], harness.make_message(sender=ALICE, to=rcpt))
        wait_gone(s, qid, "delivery over TLS")
        assert sink.tls_sessions == 1 and len(sink.for_rcpt(rcpt)) == 1
        assert re.search(r"tries=1, tls=TLSv1\.[23]:\S+, dsn=2\.0\.0, status=sent", log_lines(s, qid)[0])
    finally:
        sink.close()


def test_tls_required_defers_without_starttls(module_factory, sink):
    s = new_relay(module_factory, relay_transport="*=127.0.0.1:%d" % sink.port, relay_tls="encrypt",
                  relay_retry_min="1h")
    rcpt = "secret@far.example"
    qid = submit(s, [rcpt], harness.make_message(sender=ALICE, to=rcpt))
    wait_until(lambda: [r[1] for r in outbound(s, qid)] == [1], 30 * SLOW, what="the recipient deferred")
    assert sink.for_rcpt(rcpt) == []
    line = log_lines(s, qid)[0]
    assert "dsn=4.7.4, status=deferred (4.7.4 TLS is required, but 127.0.0.1[127.0.0.1] does not offer STARTTLS)" \
        in line, line


def test_bad_transport_refuses_to_start(strata_factory):
    s = strata_factory.new(options={"relay.transport": "far.example"}, start=False)
    s.start(wait=False)
    s.wait_exit(expect_rc=1)
    assert 'cannot start the relay: relay.transport: "far.example" is not domain=host:port' in s.read_log()
