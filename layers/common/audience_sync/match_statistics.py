"""Criteo's match statistics of every segment this deployment owns, as metrics (hourly, on its own schedule).

Criteo needs up to 24 h to match a contact list, so an hourly reading is enough. The metrics are totals per
deployment (a dimension per audience would cost a custom metric each); each segment's figures are logged.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from audience_sync.advertisers import Advertisers
from audience_sync.audience_config import AudienceConfig
from audience_sync.budget import CallBudget
from audience_sync.criteo.errors import CriteoError
from audience_sync.observability import logger

SAFETY_SECONDS = 10.0


def measure(
    advertisers: Advertisers,
    config: AudienceConfig,
    calls_per_minute: int,
    seconds_left: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Read the statistics of our contact lists (as each advertiser's directory finds them), advertiser by
    advertiser, taking each call from the app's budget (waiting for it while the invocation has time: what is
    left is skipped and counted); the counts for metrics (`match_rate_percent`: matched identifiers of all,
    over every segment read)."""

    def take(budget: CallBudget) -> bool:
        return budget.wait_for(1, lambda: seconds_left() - SAFETY_SECONDS, sleep)

    totals: Counter[str] = Counter()
    lowest = 100
    for name in config.advertisers():
        advertiser = advertisers.get(name, config.rate(name, calls_per_minute))
        if advertiser is None:
            continue  # counted as criteo_credentials_errors by the caller
        try:
            if not take(advertiser.app.budget):
                totals["match_statistics_skipped"] += 1
                continue
            for segment_name, segment_id in advertiser.directory.ours().items():
                if not take(advertiser.app.budget):
                    totals["match_statistics_skipped"] += 1
                    continue
                figures = advertiser.criteo.statistics(segment_id)
                identifiers = int(figures.get("numberOfIdentifiers") or 0)
                matches = int(figures.get("numberOfMatches") or 0)
                totals["segments_measured"] += 1
                totals["segment_identifiers"] += identifiers
                totals["segment_matches"] += matches
                if identifiers:
                    lowest = min(lowest, round(100 * matches / identifiers))
                logger.info(
                    "match statistics",
                    extra=dict(segment=segment_name, advertiser=name, identifiers=identifiers, matches=matches),
                )
        except CriteoError as error:
            totals["match_statistics_failures"] += 1
            logger.warning("match statistics not read", extra=dict(advertiser=name, reason=str(error)))
    rate = (
        round(100 * totals["segment_matches"] / totals["segment_identifiers"]) if totals["segment_identifiers"] else 0
    )
    return {
        "segments_measured": totals["segments_measured"],
        "segment_identifiers": totals["segment_identifiers"],
        "segment_matches": totals["segment_matches"],
        "match_rate_percent": rate,
        "lowest_match_rate_percent": lowest if totals["segments_measured"] else 0,
        "match_statistics_skipped": totals["match_statistics_skipped"],
        "match_statistics_failures": totals["match_statistics_failures"],
    }
