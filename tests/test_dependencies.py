"""A missing required dependency fails the test run loudly (tests/conftest.py), it does not
skip the tests that need it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess pytest run: make test runs it, make test-fast not
def test_a_missing_required_dependency_fails_the_run():
    code = (
        "import sys; sys.modules['uproot'] = None; import pytest; "  # None: import fails
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_config.py', "
        "'-k', 'edges_parse']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error, not 0 with skips
    assert "required dependencies missing or broken: uproot" in r.stdout + r.stderr
