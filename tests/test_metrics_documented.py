"""The README's metric list is what the code emits: every name the code can emit is declared and documented."""

from __future__ import annotations

import re
from pathlib import Path

from audience_sync.observability import INGEST_METRIC_PREFIXES, INGEST_METRICS, SYNC_METRICS
from devtools.template import load_template

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "layers" / "common" / "audience_sync"


def _readme_metrics(label: str) -> set[str]:
    """Backticked names after `label:` in the README's metrics bullet (up to the next label or bullet)."""
    text = (ROOT / "README.md").read_text()
    bullet = text[text.index("- Metrics (") :]
    bullet = bullet[: bullet.index("\n- ")]
    part = bullet[bullet.index(f"{label}:") :]
    part = re.split(r"\n\s+[A-Z][a-z]+:", part[len(label) + 1 :])[0]
    return set(re.findall(r"`([a-z_<>]+)`", part))


def _emitted_by_sync() -> set[str]:
    code = "".join((LAYER / name).read_text() for name in ("sync.py", "flush.py", "moves.py"))
    names = set(re.findall(r'(?:counts|gauges)\["([a-z_]+)"\]', code)) | set(re.findall(r'"(outbox_[a-z_]+)"', code))
    names |= set(re.findall(r'"([a-z_]+)" if plan.operation == ADD else "([a-z_]+)"', code)[0])
    for path in (ROOT / "functions" / "sync" / "app.py", LAYER / "advertisers.py", LAYER / "match_statistics.py"):
        names |= set(re.findall(r'"([a-z_]+)": ', path.read_text()))
    return names


def _emitted_by_ingest() -> set[str]:
    code = (LAYER / "ingest.py").read_text()
    names = set(re.findall(r'\{"([a-z_]+)": 1\}', code))
    metrics_of = code[code.index("def metrics_of") :]
    names |= set(re.findall(r'^\s+"([a-z_]+)": ', metrics_of, re.MULTILINE))
    names |= set(re.findall(r'add_metric\(name="([a-z_]+)"', (ROOT / "functions" / "ingest" / "app.py").read_text()))
    return names


def test_every_metric_the_code_emits_is_declared() -> None:
    assert _emitted_by_sync() == SYNC_METRICS
    assert _emitted_by_ingest() == INGEST_METRICS


def test_the_readme_lists_exactly_the_declared_metrics() -> None:
    assert _readme_metrics("Sync") == SYNC_METRICS
    documented = _readme_metrics("Ingest")
    examples = {name for name in documented if name.startswith(INGEST_METRIC_PREFIXES) and "<" not in name}
    assert documented - examples == INGEST_METRICS | {f"{prefix}<reason>" for prefix in INGEST_METRIC_PREFIXES}


def test_every_alarm_and_dashboard_metric_of_ours_is_one_the_code_emits() -> None:
    template = load_template()
    namespace = {"Fn::FindInMap": ["Observability", "Powertools", "Namespace"]}
    alarmed = {
        r["Properties"]["MetricName"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"]["Namespace"] == namespace
    }
    assert alarmed and alarmed <= INGEST_METRICS | SYNC_METRICS
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    charted = set(re.findall(r'"\$\{Namespace\}",\s*"([a-z_]+)"', body))
    assert charted and charted <= INGEST_METRICS | SYNC_METRICS
