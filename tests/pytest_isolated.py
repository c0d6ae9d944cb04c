"""The fast suite, as README's test command runs it: ``.venv/bin/python -m tests.pytest_isolated [pytest args]``.

pytest runs everything outside tests/ray in one process, then each Ray integration module in
a fresh interpreter of its own. A pytest process that has started and stopped several Ray
clusters can fail to start the next one (its GCS or raylet never comes up within Ray's
start-up deadline: seen in 3 of 6 full runs here, never with one cluster per process), so
no process starts more than one module's cluster. Extra arguments go to every pytest run
(``-m slow`` runs the slow suites the same way). Exits non-zero if any run failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NO_TESTS_COLLECTED = 5  # pytest's exit code when a module's tests are all deselected


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    ray_modules = sorted(str(p) for p in (here / "ray").glob("test_*.py"))
    runs = [["--ignore", str(here / "ray")], *([m] for m in ray_modules)]
    failed = []
    for args in runs:
        code = subprocess.run([sys.executable, "-m", "pytest", *args, *argv]).returncode
        if code not in (0, NO_TESTS_COLLECTED):
            failed.append((" ".join(args), code))
    for what, code in failed:
        print(f"tests.pytest_isolated: pytest {what} exited with {code}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
