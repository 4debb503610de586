"""The scaling figures as one PNG: changes/min into Criteo as audiences grow (before and after the outbox,
against the budget's ceiling), PATCHes vs stream size (ours, window minimum, peer), sync-core throughput vs
batch size (with the floor), latency vs audiences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.criteo_calls import BUDGET_PER_MINUTE


def draw(results: dict[str, Any], path: Path) -> None:
    """Write the figure (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, calls, core, latency) = plt.subplots(1, 4, figsize=(21, 4.8))
    streams = results["criteo_calls"]
    # The largest burst size run over every audience count (the 10M streams are run one by one).
    counts = {row["audiences"] for row in streams}
    burst_sizes = {row["changes"] for row in streams if row.get("before_patches")}
    biggest = max(size for size in burst_sizes if counts <= {r["audiences"] for r in streams if r["changes"] == size})
    bursts = sorted(
        (r for r in streams if r["mode"] == "burst" and r["changes"] == biggest), key=lambda r: r["audiences"]
    )
    audiences = [r["audiences"] for r in bursts]
    budget = BUDGET_PER_MINUTE
    after = [r["changes"] / ((r["arrival_seconds"] + r["drain_after_last_arrival_s"]) / 60) for r in bursts]
    before = [r["changes"] / ((r["before_patches"] + r["calls"]["create"] + 2) / budget) for r in bursts]
    rate.plot(audiences, after, "o-", label="after (outbox, measured on the simulated clock)")
    rate.plot(audiences, before, "s--", label="before (a PATCH set per invocation, at the budget)")
    rate.axhline(budget * 50_000, color="red", linewidth=0.8, label=f"ceiling: {budget}/min x 50,000")
    rate.set(xscale="log", yscale="log", xlabel="audiences", ylabel="changes per minute")
    rate.set_title(f"{biggest:,}-change burst: changes/min into Criteo")
    rate.legend(fontsize=8)
    for count in sorted({row["audiences"] for row in streams}):
        mine = sorted(
            (r for r in streams if r["audiences"] == count and r["mode"] == "burst"), key=lambda r: r["changes"]
        )
        sizes = [r["changes"] for r in mine]
        line = calls.plot(sizes, [r["calls"]["patch"] for r in mine], "o-", label=f"ours, {count} aud.")[0]
        calls.plot(sizes, [r["window_minimum"] for r in mine], "x:", color=line.get_color())
        with_peer = [r for r in mine if r["peer_patches"]]
        calls.plot(
            [r["changes"] for r in with_peer],
            [r["peer_patches"] for r in with_peer],
            "s--",
            color=line.get_color(),
            alpha=0.5,
        )
    calls.set(xscale="log", yscale="log", xlabel="changes in the burst", ylabel="Criteo PATCHes")
    calls.set_title("PATCHes (o ours, x window minimum, s Segment's destination)")
    calls.legend(fontsize=8)
    rows = results["sync_core"]
    core.plot([r["records"] for r in rows], [r["records_per_second"] for r in rows], "o-", label="sync core")
    core.plot([r["records"] for r in rows], [r["floor_records_per_second"] for r in rows], "x:", label="json+sha256")
    core.axhline(200_000, color="red", linewidth=0.8, label="target 200k/s")
    core.set(xscale="log", xlabel="records per batch", ylabel="records/s (one core)", ylim=(0, None))
    core.set_title("Sync core throughput")
    core.legend(fontsize=8)
    for mode, style in (("burst", "o-"), ("steady", "s--")):
        mine = sorted(
            (r for r in streams if r["mode"] == mode and r["changes"] == biggest), key=lambda r: r["audiences"]
        )
        latency.plot(
            [r["audiences"] for r in mine], [r["latency_p99_s"] / 60 for r in mine], style, label=f"p99, {mode}"
        )
        latency.plot(
            [r["audiences"] for r in mine],
            [r["latency_p50_s"] / 60 for r in mine],
            style,
            alpha=0.4,
            label=f"p50, {mode}",
        )
    latency.set(xscale="log", xlabel="audiences", ylabel="minutes from queued to sent")
    latency.set_title(f"Latency, {biggest:,} changes (burst, and steady over 30 min)")
    latency.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
