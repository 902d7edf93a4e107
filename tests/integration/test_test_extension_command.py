"""``python app.py test-extension FOLDER``: an extension author runs their extension's own tests
from Atelier's install, in a real Atelier on a tiny model, with pytest's exit status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modules.devtools.extension_testing import run_extension_tests

ROOT = Path(__file__).resolve().parents[2]
STAMP_PREFIX = ROOT / "tests" / "fixtures" / "extensions" / "stamp_prefix"

# The author's tests, as they would sit in the extension's own repository (tests/ beside main.py).
AUTHOR_TESTS = '''
from pathlib import Path

import pytest

from modules.devtools.extension_testing import run_extension_tests

from modules.devtools.extension_testing import tiny_request


def test_the_prefix_reaches_the_prompt(atelier_with_extension):
    services = atelier_with_extension(Path(__file__).parents[1], builtin=[])
    result = services.generation.generate(tiny_request(prompt="a cat"))
    assert result.images[0].infotext.startswith("masterpiece, a cat")


def test_a_failing_check_fails():
    assert "cat" == "dog"
'''


def test_test_extension_runs_the_extensions_tests_with_pytests_status(tmp_path: Path) -> None:
    folder = tmp_path / "stamp_prefix"
    shutil.copytree(STAMP_PREFIX, folder)
    (folder / "tests").mkdir()
    (folder / "tests" / "test_stamp_prefix_author.py").write_text(AUTHOR_TESTS, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "test-extension", str(folder), "-q",
                          "-p", "no:cacheprovider"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output  # pytest's status: one test failed
    assert "1 failed, 1 passed" in output, output
    assert "test_a_failing_check_fails" in output and "test_the_prefix_reaches_the_prompt" not in output


def test_a_folder_that_is_not_an_extension_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run_extension_tests([str(tmp_path)]) == 2
    assert "not an extension folder" in caplog.text
    assert run_extension_tests([]) == 2 and "usage" in caplog.text
