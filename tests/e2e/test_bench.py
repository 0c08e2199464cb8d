"""A smoke run of the benchmark tool (seconds, not minutes), so it never rots:
every scenario runs against the real broker, directly and through warren."""
import json
import math
import subprocess
import xml.etree.ElementTree as ElementTree

from conftest import ROOT

BENCH = ROOT / "target" / "release" / "warren-bench"


def test_smoke_run_measures_every_scenario(broker, tmp_path):
    run = subprocess.run(
        [str(BENCH), "--smoke", "--broker", f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {row["name"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    for expected in ("publish 16 B", "publish 4 KiB, confirms", "warren CPU per message, publish 16 B",
                     "publish 16 B, 64 clients", "consume 16 B, prefetch 200, acks",
                     "latency p50, publish to deliver", "churn, 32 in parallel",
                     "warren RSS per idle client, 20 clients",
                     "upstream connections for 20 idle clients",
                     "soak, 20 idle + 32 churning, 2s: open fds after - before"):
        assert expected in rows, sorted(rows)
    for row in rows.values():
        for side in ("direct", "warren"):
            if row[side] is not None:
                assert row[side]["runs"], (row["name"], side)
                assert all(math.isfinite(v) for v in row[side]["runs"]), row
                if "after - before" not in row["name"]:
                    assert all(v >= 0 for v in row[side]["runs"]), row
    assert rows["publish 16 B"]["warren"]["runs"][0] > 0
    assert rows["upstream connections for 20 idle clients"]["warren"]["runs"] == [1.0]
    # Nothing left open after the soak's clients all left.
    assert rows["soak, 20 idle + 32 churning, 2s: open fds after - before"]["warren"]["runs"][0] <= 0
    assert "warren vs direct" in run.stdout and "publish 16 B" in run.stdout
    svg = ElementTree.parse(tmp_path / "ratios.svg").getroot()
    assert svg.tag.endswith("svg") and len(list(svg.iter("{http://www.w3.org/2000/svg}rect"))) > 5
