"""Never lose accepted mail: SIGTERM during DATA, clean restart after 50
messages, and kill -9 while clients are being answered."""
import os
import signal
import threading
import time

import pytest

from harness import SLOW, StrataError, dot_stuff, make_message, queued_id, split_received, wait_until

ALICE, BOB, CAROL = "alice@local.example", "bob@local.example", "carol@local.example"
REJECTED_TEMPFAIL = 'strata_smtp_rejected_total{reason="tempfail"}'


def all_stored(s, addresses):
    """{queue id: (address, stored bytes)} for every message of the accounts."""
    out = {}
    for a in addresses:
        for raw in s.mailbox_contents(a):
            field, rest = split_received(raw)
            qid = field.split(" id ", 1)[1].split()[0].rstrip(";")
            out.setdefault(qid, []).append((a, raw, rest))
    return out


def test_sigterm_during_data(strata_factory):
    s = strata_factory.new(populate=True)
    qid_ok, msg_ok = s.deliver([ALICE])
    c = s.smtp()
    c.ehlo()
    c.expect("MAIL FROM:<t@remote.example>", 250)
    c.expect("RCPT TO:<%s>" % ALICE, 250)
    c.expect("DATA", 354)
    c.send(make_message(to=ALICE, size=50000)[:40000])   # unfinished
    idle = s.smtp()                                        # an idle session too
    time.sleep(0.2)
    s.send_signal(signal.SIGTERM)
    r = c.reply_or_eof()
    assert r is None or (r.code == 421 and r.enhanced == "4.3.2"), r
    r = idle.reply_or_eof()
    assert r is None or (r.code == 421 and r.enhanced == "4.3.2"), r
    c.close()
    idle.close()
    assert s.wait_exit() == 0
    s.start()
    assert s.tmp_files() == []
    uids = s.mail_uids(ALICE)
    assert len(uids) == 1, uids
    field, rest = split_received(s.mail_cat(ALICE, uids[0]))
    assert qid_ok in field and rest == msg_ok


def test_fifty_messages_survive_restart(strata_factory):
    s = strata_factory.new(populate=True)
    sent = {}
    rcpts = [ALICE, BOB, CAROL]
    for i in range(0, 50, 5):
        with s.smtp() as c:
            c.ehlo()
            for j in range(5):           # five transactions per connection
                to = rcpts[(i + j) % 3]
                msg = make_message(to=to, size=200 + 97 * (i + j))
                qid = queued_id(c.send_message("r@remote.example", [to], msg, ehlo=False))
                sent[qid] = (to, msg)
            c.expect("QUIT", 221)
    assert len(sent) == 50
    s.restart()
    stored = all_stored(s, rcpts)
    assert set(stored) == set(sent)
    for qid, (to, msg) in sent.items():
        [(addr, raw, rest)] = stored[qid]
        assert addr == to and rest == msg, qid
        with open(s.blob_path(qid), "rb") as f:
            assert f.read(len(raw)) == raw


class Sender(threading.Thread):
    """Sends messages in a loop until told to stop or the server dies;
    records every message that got its 250."""

    def __init__(self, s, n, to):
        super().__init__(daemon=True)
        self.s, self.n, self.to = s, n, to
        self.accepted = {}
        self.attempted = []
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            with self.s.smtp() as c:
                c.ehlo()
                while not self.stop.is_set():
                    msg = make_message(to=self.to, size=500 + 300 * (len(self.attempted) % 20))
                    self.attempted.append(msg)
                    c.expect("MAIL FROM:<k%d@remote.example>" % self.n, 250)
                    c.expect("RCPT TO:<%s>" % self.to, 250)
                    c.expect("DATA", 354)
                    c.send(dot_stuff(msg) + b".\r\n")
                    r = c.reply()
                    self.accepted[queued_id(r)] = msg
        except (StrataError, OSError) as e:
            self.error = e              # the server was killed under us: expected


def test_kill_9_loses_nothing_acknowledged(strata_factory):
    s = strata_factory.new(populate=True)
    rcpts = [ALICE, BOB, CAROL]
    senders = [Sender(s, i, rcpts[i % 3]) for i in range(6)]
    for t in senders:
        t.start()
    wait_until(lambda: sum(len(t.accepted) for t in senders) >= 60 or not any(t.is_alive() for t in senders),
               60 * SLOW, what="60 accepted messages")
    assert all(t.error is None for t in senders), [t.error for t in senders]
    s.kill()                                   # no clean-up in the daemon
    for t in senders:
        t.stop.set()
        t.join(10 * SLOW)
    acked = {}
    for t in senders:
        for qid, msg in t.accepted.items():
            acked[qid] = (t.to, msg)
    attempted = {m for t in senders for m in t.attempted}
    s.start()
    stored = all_stored(s, rcpts)
    # every acknowledged message is there, once, byte for byte
    for qid, (to, msg) in acked.items():
        assert qid in stored, "acknowledged message %s lost after kill -9" % qid
        [(addr, raw, rest)] = stored[qid]
        assert addr == to and rest == msg, qid
    # and nothing else is a partial message: the rest were sent completely too
    for qid, copies in stored.items():
        for addr, raw, rest in copies:
            assert rest in attempted, "stored message %s is not a message any client sent whole" % qid
    # the index names no missing blob, and no temp file survived recovery
    for qid in s.referenced_blobs():
        assert os.path.exists(s.blob_path(qid)), qid
    assert s.tmp_files() == []
    # the restarted daemon works
    s.deliver([ALICE])


FAULTS = [
    # STRATA_FAULT spec (core.h), the reply the failed delivery must get
    ("fsync:2:5", 451, "4.3.0"),          # EIO on a blob fsync
    ("write:2:28", 452, "4.3.1"),         # ENOSPC while writing a blob
    ("rename:2:5", 451, "4.3.0"),         # EIO renaming a blob into place
    ("fsync_dir:2:5", 451, "4.3.0"),      # EIO on a blob directory fsync
]


@pytest.mark.parametrize("fault,code,enhanced", FAULTS)
def test_storage_fault_is_a_4xx_never_a_loss(strata_factory, fault, code, enhanced):
    """A failing write, fsync or rename on the path to durability gives that
    one message a 4xx; nothing of it becomes visible; the others get 250."""
    s = strata_factory.new(populate=True)
    s.stop()                              # the TLS certificate exists now
    s.start(env={"STRATA_FAULT": fault})
    before = s.metrics()
    replies = []
    sent = {}
    for i in range(4):
        msg = make_message(to=ALICE, size=600 + 1000 * i)
        with s.smtp() as c:
            r = c.send_message("f@remote.example", [ALICE], msg)
            replies.append(r)
            if r.code == 250:
                sent[queued_id(r)] = msg
            c.expect("QUIT", 221)
    failed = [r for r in replies if r.code != 250]
    assert len(failed) == 1, replies
    assert failed[0].code == code and failed[0].enhanced == enhanced, failed
    after = s.metrics()
    assert after[REJECTED_TEMPFAIL] - before[REJECTED_TEMPFAIL] == 1
    wait_until(lambda: s.tmp_files() == [], 5 * SLOW, what="blobs/tmp to be empty")
    stored = all_stored(s, [ALICE])
    assert set(stored) == set(sent)
    for qid, msg in sent.items():
        assert stored[qid][0][2] == msg
    assert {os.path.basename(p) for p in s.blob_files()} == set(sent)
    # the server is healthy and keeps accepting
    s.deliver([ALICE])
    s.restart()
    assert len(s.mail_uids(ALICE)) == len(sent) + 1
