"""
conftest.py - fixtures for the integration suite (pytest against a real
`strata serve`).  See harness.py for the machinery.

Fixtures:
  strata_factory   function scope: new Strata instances, stopped (SIGTERM,
                   exit code 0, no sanitizer report) when the test ends
  module_factory   the same, shared by one test module
  server           a running daemon shared by a module, with the standard
                   domain local.example and accounts alice, bob, carol

On a failing test the tail of every live daemon's log is attached to the
report.
"""
import os
import shutil
import tempfile

import pytest

pytest.register_assert_rewrite("harness")

import harness  # noqa: E402
from harness import Strata  # noqa: E402

LOCAL = "local.example"
USERS = ("alice", "bob", "carol")

_live = []


class Factory:
    def __init__(self, root, prefix):
        self.root = root
        self.prefix = prefix
        self.instances = []

    def new(self, options=None, config_text=None, start=True, populate=False):
        name = "%s-%d" % (self.prefix, len(self.instances))
        s = Strata(self.root, name, options=options, config_text=config_text)
        self.instances.append(s)
        _live.append(s)
        if start:
            s.start()
        if populate:
            populate_standard(s)
        return s

    def close(self):
        errors = []
        for s in self.instances:
            try:
                if s.proc is not None:
                    s.stop()
                else:
                    s.check_log()
            except Exception as e:   # report every instance, not just the first
                errors.append(str(e))
            finally:
                if s in _live:
                    _live.remove(s)
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


def populate_standard(s):
    s.add_domain(LOCAL)
    for u in USERS:
        s.add_user("%s@%s" % (u, LOCAL))


def _safe_name(nodeid):
    return "".join(c if c.isalnum() else "_" for c in nodeid)[-60:]


@pytest.fixture(scope="session")
def strata_bin():
    if not (os.path.isfile(harness.STRATA_BIN) and os.access(harness.STRATA_BIN, os.X_OK)):
        pytest.exit("strata binary not found at %s (set STRATA_BIN)" % harness.STRATA_BIN, returncode=2)
    return harness.STRATA_BIN


@pytest.fixture(scope="session")
def tmp_root(strata_bin):
    root = tempfile.mkdtemp(prefix="strata-it-")
    harness.make_traversable(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def module_factory(tmp_root, request):
    f = Factory(tmp_root, "m-" + _safe_name(request.node.nodeid))
    yield f
    f.close()


@pytest.fixture
def strata_factory(tmp_root, request):
    f = Factory(tmp_root, "f-" + _safe_name(request.node.nodeid))
    yield f
    f.close()


@pytest.fixture(scope="module")
def server(module_factory):
    return module_factory.new(populate=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for s in list(_live):
            if s.log_path and os.path.exists(s.log_path):
                rep.sections.append(("strata serve log %s (last 150 lines)" % s.log_path, s.log_tail()))
