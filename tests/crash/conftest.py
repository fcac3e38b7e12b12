"""
conftest.py - fixtures of the crash-consistency harness.

It reuses the integration suite's harness (tests/integration/harness.py:
daemon life cycle, raw SMTP client, index and blob inspection) by putting
that directory on sys.path.

Fixtures:
  crash_root   a private, traversable temporary directory for the test's
               state directories; removed when the test ends (kept when
               STRATA_CRASH_KEEP=1, for post-mortems of a failing seed).
"""
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.path.insert(0, HERE)

pytest.register_assert_rewrite("harness", "crashlib")

import harness  # noqa: E402


@pytest.fixture(scope="session")
def strata_bin():
    if not (os.path.isfile(harness.STRATA_BIN) and os.access(harness.STRATA_BIN, os.X_OK)):
        pytest.exit("strata binary not found at %s (set STRATA_BIN)" % harness.STRATA_BIN, returncode=2)
    return harness.STRATA_BIN


@pytest.fixture
def crash_root(strata_bin):
    root = tempfile.mkdtemp(prefix="strata-crash-")
    harness.make_traversable(root)
    yield root
    if os.environ.get("STRATA_CRASH_KEEP") == "1":
        sys.stderr.write("\nstate kept in %s (STRATA_CRASH_KEEP=1)\n" % root)
    else:
        shutil.rmtree(root, ignore_errors=True)
