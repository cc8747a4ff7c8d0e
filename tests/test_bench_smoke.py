"""`python -m bench` runs end to end (its smallest section), prints its table and writes it.

No figure is checked here (speed lives in the benchmark's own "target" and "met?" columns):
only that the command works, so that it still does on the day someone needs the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| measure | conditions | result | p50 / p99 | relay CPU | target | met? |"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PN_")}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_quick_crypto_prints_the_table_and_writes_benchmarks_md(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nHand-written prose stays.\n")

    done = run_bench("--quick", "--only", "crypto", "--write", "--output", str(output))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert HEADER in lines
    crypto_rows = [line for line in lines if line.startswith("| crypto ceiling |")]
    assert len(crypto_rows) == 1
    assert "requests/s per core" in crypto_rows[0]
    assert "python -m bench --quick --only crypto --write --output" in done.stdout
    written = output.read_text()
    assert written.startswith("# Benchmarks\n\nHand-written prose stays.\n")
    assert HEADER in written
    assert "- machine: " in written and "Python 3." in written
    assert "commit `" in written

    # A second write replaces the table instead of adding another.
    again = run_bench("--quick", "--only", "crypto", "--write", "--output", str(output))
    assert again.returncode == 0, again.stderr
    assert output.read_text().count(HEADER) == 1


def test_an_unknown_section_is_refused_in_one_line() -> None:
    done = run_bench("--only", "crypto,warp")

    assert done.returncode == 2
    assert "unknown section(s) warp" in done.stderr
    assert "Traceback" not in done.stderr
