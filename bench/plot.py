"""The scaling figures as one PNG: calls vs stream size (ours, minimum, peer), sync-core throughput vs
batch size (with the floor), latency vs batching window."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], path: Path) -> None:
    """Write the figure (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (calls, core, latency) = plt.subplots(1, 3, figsize=(16, 4.8))
    for audiences in sorted({row["audiences"] for row in results["criteo_calls"]}):
        rows = [row for row in results["criteo_calls"] if row["audiences"] == audiences]
        sizes = [row["changes"] for row in rows]
        line = calls.plot(sizes, [row["calls"]["total"] for row in rows], "o-", label=f"ours, {audiences} aud.")[0]
        calls.plot(sizes, [row["minimum"]["total"] for row in rows], "x:", color=line.get_color())
        calls.plot(sizes, [row["peer"]["total"] for row in rows], "s--", color=line.get_color(), alpha=0.5)
    calls.set(xscale="log", yscale="log", xlabel="changes in stream", ylabel="Criteo calls")
    calls.set_title("Criteo calls (o ours, x minimum, s Segment's destination)")
    calls.legend(fontsize=8)
    rows = results["sync_core"]
    core.plot([r["records"] for r in rows], [r["records_per_second"] for r in rows], "o-", label="sync core")
    core.plot([r["records"] for r in rows], [r["floor_records_per_second"] for r in rows], "x:", label="json+sha256")
    core.axhline(200_000, color="red", linewidth=0.8, label="target 200k/s")
    core.set(xscale="log", xlabel="records per batch", ylabel="records/s (one core)", ylim=(0, None))
    core.set_title("Sync core throughput")
    core.legend(fontsize=8)
    rows = results["latency"]
    windows = [r["window_s"] for r in rows]
    latency.plot(windows, [r["p50_s"] for r in rows], "o-", label="p50")
    latency.plot(windows, [r["p99_s"] for r in rows], "o--", label="p99")
    twin = latency.twinx()
    twin.plot(windows, [r["patches_per_1k_events"] for r in rows], "s:", color="grey", label="PATCH per 1k events")
    twin.set_ylabel("PATCH calls per 1,000 events (trickle)")
    latency.set(xlabel="batching window (s)", ylabel="accepted -> in Criteo (s)")
    latency.set_title("Latency vs calls (local stack)")
    latency.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
