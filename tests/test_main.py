"""``python -m feds2r`` runs the same command line as the ``feds2r`` script."""

import subprocess
import sys

from feds2r import __version__


def test_python_m_feds2r_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "feds2r", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"feds2r {__version__}"


def test_python_m_feds2r_reports_errors_like_the_script():
    done = subprocess.run(
        [sys.executable, "-m", "feds2r", "eval", "--model", "/nonexistent/run", "--data", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error:")
