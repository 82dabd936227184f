"""`make test`'s two workers: every test file that uses a shared started engine runs on that engine's worker."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ENGINE_FILES, PROJECT_ROOT, work_unit

# The whole suite collected in a fresh interpreter, printing which shared engines each test file's tests use
# (directly or through another fixture).
COLLECT = """
import json, sys, pytest
from tests.conftest import SHARED_ENGINES

class EnginesUsed:
    def pytest_collection_finish(self, session):
        used = {}
        for item in session.items:
            for name in getattr(item, "fixturenames", ()):
                if name in SHARED_ENGINES:
                    used.setdefault(item.nodeid.split("::")[0], set()).add(SHARED_ENGINES[name])
        print("ENGINES=" + json.dumps({test_file: sorted(groups) for test_file, groups in used.items()}))

sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], plugins=[EnginesUsed()]))
"""


def test_every_file_using_a_shared_engine_is_one_work_unit_with_the_others_using_it():
    result = subprocess.run(
        [sys.executable, "-c", COLLECT], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("ENGINES=")]
    used = json.loads(line.removeprefix("ENGINES="))
    assert all(len(groups) == 1 for groups in used.values()), used  # a file on two engines' workers cannot be
    assert {test_file: groups[0] for test_file, groups in used.items()} == ENGINE_FILES
    assert work_unit("tests/flows/test_prefect_server.py::test_a") == work_unit("tests/faults/test_flow_kill.py::t")
    assert work_unit("tests/test_config.py::test_a[1]") == "tests/test_config.py"
