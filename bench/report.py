"""The table printed at the end of a run (every figure with its reference ratio and target)."""

from __future__ import annotations

from typing import Any


def _row(what: str, figure: str, ratio: str, target: str, holds: bool | None) -> str:
    verdict = "" if holds is None else ("yes" if holds else "NO")
    return f"{what:<34} {figure:>26} {ratio:>24} {target:>16} {verdict:>5}"


def lines(results: dict[str, Any]) -> list[str]:
    """Human-readable table lines."""
    out = [_row("benchmark", "figure", "ratio (reference)", "target", None), "-" * 110]
    for row in results["criteo_calls"]:
        out.append(
            _row(
                f"1 Criteo {row['stream']} {row['mode']}",
                f"{row['calls']['patch']:,} PATCH (min {row['window_minimum']:,})",
                f"{row['patch_ratio']:.3f}x; p99 {row['latency_p99_s']:.0f} s",
                "<= 1.10x window min",
                row["patch_ratio"] <= 1.1,
            )
        )
    for row in results["sync_core"]:
        out.append(
            _row(
                f"2 sync core, batch {row['records']:,}",
                f"{row['records_per_second']:,} rec/s",
                f"{row['ratio_to_floor']:.2f}x floor",
                ">= 200,000/s",
                row["records_per_second"] >= row["target_records_per_second"],
            )
        )
    for row in results["ingest"]:
        target = row["target_events_per_second"]
        out.append(
            _row(
                f"3 ingest, {row['events_per_request']:,}-event requests",
                f"{row['events_per_second']:,} ev/s",
                f"{row['ms_per_request']} ms/request",
                f">= {target:,}/s" if target else "-",
                row["events_per_second"] >= target if target else None,
            )
        )
    cold = results["cold_init"]
    for name, row in cold["handlers"].items():
        out.append(
            _row(
                f"4 cold import, {name}",
                f"{row['median_ms']} ms",
                f"{row['ratio']:.2f}x boto3 ({cold['reference_ms']} ms)",
                f"<= {cold['target_ratio']}x",
                row["ratio"] <= cold["target_ratio"],
            )
        )
    size = results["package_size"]
    for name in ("SharedLayer", "IngestFunction", "AudienceSyncFunction"):
        if name in size:
            row = size[name]
            layer = name == "SharedLayer"
            out.append(
                _row(
                    f"5 package {name}",
                    f"{row['unzipped_mb']} MB ({row['zipped_mb']} zipped)",
                    "",
                    f"<= {size['layer_target_mb']} MB" if layer else "-",
                    row["unzipped_mb"] <= size["layer_target_mb"] if layer else None,
                )
            )
    for row in results["latency"]:
        out.append(
            _row(
                f"6 latency, window {row['window_s']} s",
                f"p50 {row['p50_s']} s, p99 {row['p99_s']} s",
                f"{row['patches_per_1k_events']} PATCH/1k events",
                "-",
                None,
            )
        )
    memory = results["memory"]
    for step in ("apply_invocation", "gather", "flush_read"):
        row = memory[step]
        out.append(
            _row(
                f"8 memory, {step.replace('_', ' ')}",
                f"{row['peak_mb']} MB peak",
                f"of {memory['function_memory_mb']} MB",
                "< function memory",
                row["peak_mb"] < memory["function_memory_mb"],
            )
        )
    flush_pass = memory["flush_pass"]
    out.append(
        _row(
            f"8 memory, flush pass of {flush_pass['audiences']} audiences",
            f"{flush_pass['shared_allowance']} MB peak",
            f"{flush_pass['no_allowance']} MB without the allowance",
            "< function memory",
            flush_pass["shared_allowance"] < memory["function_memory_mb"],
        )
    )
    cost = results["cost"]
    out.append(
        _row(
            "7 AWS cost per 1M changes",
            f"${cost['total_dollars_per_million_changes']:.3f}",
            f"dynamodb ${cost['dollars_per_million_changes']['dynamodb']:.3f}",
            "< $1",
            cost["total_dollars_per_million_changes"] < cost["target_dollars"],
        )
    )
    return out
