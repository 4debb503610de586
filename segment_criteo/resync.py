"""`resync`: make Criteo's contact list equal to what the ledger says it should hold.

Criteo can't list a segment's members, so the repair is: empty it and add the ledger's identifiers again
(`replace`, which also removes members added behind our back), or only add them again (`add`, for a
segment emptied by someone, with no gap in between). Under the lease of the audience's group (inbox.py),
so no new change is applied to it meanwhile (the sync waits, then hands its messages back for later); changes
already waiting in the inbox or the outbox commute with the repair (their adds are in the ledger's set, their
removes are not). Calls are taken from the app's budget, shared with the sync function.

Resumable: progress is kept in the table (`resync`/`<audience>`: emptied, and per identifier type the last
identifier sent, in sorted order). A new run after an interruption takes a fresh snapshot and sends only
what sorts after that, so no chunk is sent twice; what changed meanwhile below that point was sent by the
sync as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from audience_sync.identifiers import GUM
from audience_sync.inbox import group_of
from audience_sync.plan import MAX_IDENTIFIERS_PER_PATCH
from audience_sync.records import ADD
from segment_criteo.deployment import Deployment
from segment_criteo.target import TargetError

PROGRESS = "resync"
REPLACE, ADD_ONLY = "replace", "add"
LEASE_WAIT_SECONDS = 60.0


@dataclass
class AudiencePlan:
    """What a resync of one audience sends."""

    audience: str
    advertiser: str
    segment_name: str
    segment_id: str
    mode: str
    identifiers: dict[str, list[str]]  # by type, sorted: what Criteo should hold, after what was already sent
    empty_first: bool
    resumed: bool = False
    calls: int = field(init=False)

    def __post_init__(self) -> None:
        chunks = sum(math.ceil(len(ids) / MAX_IDENTIFIERS_PER_PATCH) for ids in self.identifiers.values())
        self.calls = chunks + int(self.empty_first)

    @property
    def total(self) -> int:
        """Identifiers to send."""
        return sum(len(ids) for ids in self.identifiers.values())


def plan(deployment: Deployment, audiences: list[str] | None, mode: str) -> list[AudiencePlan]:
    """A plan per audience (every audience the ledger or the settings know when None), resuming where an
    interrupted run of the same mode stopped."""
    held: dict[str, dict[str, set[str]]] = {}
    for audience, _, membership in deployment.ledger.scan_memberships(audiences):
        for id_type, values in membership.sent().items():
            held.setdefault(audience, {}).setdefault(id_type, set()).update(values)
    names = sorted(audiences if audiences is not None else set(held) | set(deployment.config.audiences))
    segments = deployment.segments(names)
    plans = []
    for audience in names:
        progress = _progress(deployment, audience)
        resumed = progress.get("mode") == mode
        last = {k[2:]: v for k, v in progress.items() if k.startswith("l_")} if resumed else {}
        identifiers = {
            id_type: [i for i in sorted(values) if i > last.get(id_type, "")]
            for id_type, values in sorted(held.get(audience, {}).items())
        }
        segment = segments[audience]
        empty_first = mode == REPLACE and not (resumed and progress.get("emptied"))
        plans.append(
            AudiencePlan(
                audience,
                segment.advertiser,
                segment.name,
                segment.id,
                mode,
                {t: ids for t, ids in identifiers.items() if ids},
                empty_first and bool(segment.id),
                resumed,
            )
        )
    return plans


def run(deployment: Deployment, plans: list[AudiencePlan], advance: Callable[[int], None]) -> list[dict[str, Any]]:
    """Carry the plans out, one audience at a time under its group's lease; `advance(n)` after each chunk."""
    return [_run_one(deployment, p, advance) for p in plans]


def _run_one(deployment: Deployment, plan: AudiencePlan, advance: Callable[[int], None]) -> dict[str, Any]:
    inbox, group = deployment.inbox, group_of(plan.audience)
    if inbox.acquire(group, LEASE_WAIT_SECONDS) is None:
        raise TargetError(f"{plan.audience}: the sync function held the audience for a minute; try again")
    try:
        advertiser = deployment.advertiser(plan.advertiser)
        client = advertiser.criteo
        if not plan.segment_id and plan.identifiers:
            deployment.take(plan.advertiser, 2)  # at most a search and a create
            description = f"Segment Engage audience {plan.audience} (synced by segment-criteo-sync)"
            plan.segment_id = advertiser.directory.resolve(plan.segment_name, description)
        if not plan.resumed:
            _clear_progress(deployment, plan.audience)
        _save_progress(deployment, plan.audience, {"mode": plan.mode})
        if plan.empty_first:
            deployment.take(plan.advertiser)
            client.empty_contact_list(plan.segment_id)
            _save_progress(deployment, plan.audience, {"emptied": "1"})
        for id_type, identifiers in plan.identifiers.items():
            gum = deployment.target.gum_caller_id if id_type == GUM else None
            for start in range(0, len(identifiers), MAX_IDENTIFIERS_PER_PATCH):
                chunk = identifiers[start : start + MAX_IDENTIFIERS_PER_PATCH]
                deployment.take(plan.advertiser)
                if inbox.acquire(group, 0) is None:  # ours: renewed for another lease period
                    raise TargetError(f"{plan.audience}: the audience's lease was lost; run again to resume")
                client.patch_contact_list(plan.segment_id, ADD, id_type, chunk, gum_caller_id=gum)
                _save_progress(deployment, plan.audience, {f"l_{id_type}": chunk[-1]})
                advance(len(chunk))
        _clear_progress(deployment, plan.audience)
    finally:
        inbox.release(group)
    return {**asdict(plan), "identifiers": {t: len(ids) for t, ids in plan.identifiers.items()}, "done": True}


def _key(audience: str) -> dict[str, Any]:
    return {"pk": {"S": PROGRESS}, "sk": {"S": audience}}


def _progress(deployment: Deployment, audience: str) -> dict[str, str]:
    item = deployment.dynamodb.get_item(
        TableName=deployment.target.ledger_table, Key=_key(audience), ConsistentRead=True
    ).get("Item", {})
    return {name: value["S"] for name, value in item.items() if "S" in value and name not in ("pk", "sk")}


def _save_progress(deployment: Deployment, audience: str, values: dict[str, str]) -> None:
    names = {f"#{i}": name for i, name in enumerate(values)}
    attributes = {f":{i}": {"S": value} for i, value in enumerate(values.values())}
    deployment.dynamodb.update_item(
        TableName=deployment.target.ledger_table,
        Key=_key(audience),
        UpdateExpression="SET " + ", ".join(f"#{i} = :{i}" for i in range(len(values))),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=attributes,
    )


def _clear_progress(deployment: Deployment, audience: str) -> None:
    deployment.dynamodb.delete_item(TableName=deployment.target.ledger_table, Key=_key(audience))
