"""tools/memory_table: the README's memory and restore-cost figures come from these formulas."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tools.memory_table import GIB, per_rank, table


def test_per_rank_formulas_by_hand():
    # 7e9 parameters in bfloat16 on one GPU: 14 GB of weights, a device copy doubles it and is restored by
    # reading and writing 14 GB at 4 TB/s (7 ms); a host copy is one 14 GB transfer at 450 GB/s.
    dev = per_rank(7e9, 1, "device")
    assert dev == {"gpu": 28e9, "host": 0.0, "restore_s": pytest.approx(7e-3)}
    host = per_rank(7e9, 1, "host")
    assert host == {"gpu": 14e9, "host": 14e9, "restore_s": pytest.approx(14e9 / 450e9)}
    assert per_rank(70e9, 4, "host")["gpu"] == 70e9 * 2 / 4
    with pytest.raises(ValueError, match="pristine must be device or host"):
        per_rank(7e9, 1, "gpu")


def test_table_rows_and_what_does_not_fit():
    rows = table(89.4, 0.85)
    assert len(rows) == 2 + 3 * 3 * 2
    # 32B at TP 1: the device copy needs 119.2 GiB of an 89.4 GiB GPU; in host memory 16.4 GiB of KV is left.
    assert "| 32B | 1 | device | 119.2 | 0.0 | 32.0 | does not fit |" in rows
    assert "| 32B | 1 | host | 59.6 | 59.6 | 142.2 | 16.4 |" in rows
    assert f"{0.85 * 89.4 - 32e9 * 2 / GIB:.1f}" == "16.4"


@pytest.mark.parametrize("args", [["--utilization", "2"], ["--gpu-gib", "nan"], ["--hbm-gbs", "-1"],
                                  ["--c2c-gbs", "fast"], ["--dtype-bytes", "3"]])
def test_bad_options_exit_2_with_one_error_line(args):
    p = subprocess.run([sys.executable, "-m", "tools.memory_table", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert sum(line.startswith("memory_table.py: error:") for line in p.stderr.splitlines()) == 1, p.stderr
