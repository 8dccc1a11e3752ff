"""The package layering (.importlinter): each layer imports only the layers below it, nothing imports
main.py, and no package has an import circle. A broken contract fails here, and so in CI."""

import os
import subprocess
import sys

import pytest

from conftest import subprocess_timeout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_import_contracts_are_kept():
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=ROOT, capture_output=True, text=True,
                          timeout=subprocess_timeout(15))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
