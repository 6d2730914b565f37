"""The side-by-side CPU latency script runs, prints every row, and leaves the environment as it was."""

import os

import cpu_speed


def test_cpu_speed_prints_each_row_and_restores_the_environment(capsys, monkeypatch):
    monkeypatch.delenv("SHG_FAST_WINOGRAD", raising=False)
    cpu_speed.main(["--stacks", "1", "--features", "16", "--size", "64", "--repeats", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    for row in ("reference: median", "fast: median", "fast, direct 3x3: median", "speed-up"):
        assert row in out
    assert "SHG_FAST_WINOGRAD" not in os.environ
    difference = float(out.rsplit("max relative difference", 1)[1])
    assert difference < 1e-4
