"""The seed tutorial's five examples (examples/tutorial.py) run and match sequential Python."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "examples" / "tutorial.py"


def test_the_tutorial_runs_and_matches_sequential_python():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("equal to sequential") == 5, done.stdout
    assert done.stdout.count("visualize(): <belated.Picture png") == 3
    assert "| 5: compute(totals, counts) |" in done.stdout
