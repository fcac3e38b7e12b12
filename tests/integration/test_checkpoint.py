"""WAL checkpoints of the index (src/store/store_checkpoint.c).

With store.checkpointer=yes a thread of its own copies the write-ahead log
into index.db when it holds store.checkpoint_pages pages (and every few
seconds while it is not fully copied): the WAL stays bounded while mail
flows, strata_store_checkpoints_total counts the checkpoints, and no
delivery is lost across a restart.  With store.checkpointer=no the
committing connection checkpoints as SQLite does by default, at the same
threshold: the WAL is bounded too, and the checkpointer's counter stays 0.

The threshold is set low (64 pages) so a few hundred small deliveries pass
it many times; without any checkpoint the log would grow past the bound
asserted here several times over (the test prints the sizes)."""
import os

import time

import pytest

import harness
from harness import make_message, queued_id

PAGES = 64
FRAME = 4096 + 24            # a WAL frame: page plus frame header
VALVE = 16                   # store_checkpoint.c CKPT_VALVE_FACTOR
BATCHES = 30                 # connections
PER_BATCH = 20               # deliveries on each
USERS = ["ck%d@local.example" % i for i in range(8)]
PASSIVE = 'strata_store_checkpoints_total{mode="passive"}'
RESTART = 'strata_store_checkpoints_total{mode="restart"}'


def wal_bytes(srv):
    try:
        return os.path.getsize(os.path.join(srv.state_dir, "index.db-wal"))
    except FileNotFoundError:
        return 0


def deliver_many(srv, tag):
    """BATCHES x PER_BATCH deliveries, each to two accounts; returns the
    largest WAL size seen between batches and the number delivered."""
    most = 0
    n = 0
    for b in range(BATCHES):
        with srv.smtp() as c:
            for i in range(PER_BATCH):
                rcpts = [USERS[(b + i) % len(USERS)], USERS[(b + i + 3) % len(USERS)]]
                data = make_message(subject="%s %d/%d" % (tag, b, i), to=rcpts[0], size=3000)
                r = c.send_message("sender@remote.example", rcpts, data, ehlo=(i == 0))
                queued_id(r)
                n += 1
            c.expect("QUIT", 221)
        most = max(most, wal_bytes(srv))
    return most, n


@pytest.fixture(scope="module", params=["yes", "no"])
def srv(request, module_factory):
    s = module_factory.new(options={"store.checkpointer": request.param,
                                    "store.checkpoint_pages": str(PAGES)}, populate=True)
    for u in USERS:
        s.add_user(u)
    s.mode = request.param
    return s


def test_wal_stays_bounded_and_checkpoints_are_counted(srv):
    before = srv.metrics()
    most, n = deliver_many(srv, "bounded")
    after = srv.metrics()
    commits = after["strata_store_commits_total"] - before["strata_store_commits_total"]
    bound = VALVE * PAGES * FRAME
    print("mode %s: %d deliveries in %d commits, largest WAL %d bytes (bound %d)"
          % (srv.mode, n, commits, most, bound))
    assert most <= bound, (most, bound)
    ran = after.get(PASSIVE, 0) - before.get(PASSIVE, 0)
    if srv.mode == "yes":
        # several thousand WAL frames at 64 a checkpoint: many checkpoints
        assert ran >= 5, (before.get(PASSIVE), after.get(PASSIVE))
        assert after["strata_store_checkpoint_duration_seconds_count"] >= ran
        # the log was rewound (RESTART after a complete checkpoint)
        assert after.get(RESTART, 0) > before.get(RESTART, 0), (before.get(RESTART), after.get(RESTART))
    else:
        assert ran == 0 and after.get(RESTART, 0) == 0, (before, after)
    counts = {u: len(srv.mail_uids(u)) for u in USERS}
    assert sum(counts.values()) == 2 * n, counts


def test_idle_wal_is_checkpointed(srv):
    """A few commits far below the threshold are copied, and the log
    rewound, within seconds of the index going quiet; without the
    checkpointer nothing runs one (SQLite's own waits for the threshold)."""
    start = srv.metrics()
    srv.deliver([USERS[0]])
    if srv.mode == "no":
        time.sleep(3 * harness.SLOW)
        m = srv.metrics()
        assert m.get(PASSIVE, 0) == start.get(PASSIVE, 0) and m.get(RESTART, 0) == start.get(RESTART, 0), (start, m)
        return

    def rewound():
        m = srv.metrics()
        return (m.get(PASSIVE, 0) > start.get(PASSIVE, 0) and m.get(RESTART, 0) > start.get(RESTART, 0)
                and m["strata_store_wal_pages"] == 0)
    harness.wait_until(rewound, 15 * harness.SLOW, interval=0.2, what="an idle checkpoint and rewind")


def test_restart_keeps_every_message_and_leaves_no_wal(srv):
    counts = {u: len(srv.mail_uids(u)) for u in USERS}
    srv.stop()
    assert wal_bytes(srv) == 0, wal_bytes(srv)
    srv.start()
    after = {u: len(srv.mail_uids(u)) for u in USERS}
    assert after == counts, (counts, after)
    srv.check_log()
