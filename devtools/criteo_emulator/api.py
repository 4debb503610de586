"""The audience-segment endpoints' behaviour on an account, for bodies that already passed spec validation."""

from __future__ import annotations

from typing import Any

from devtools.criteo_emulator.errors import Reply, problem
from devtools.criteo_emulator.identifiers import is_valid
from devtools.criteo_emulator.state import AccountState, Segment, iso_timestamp

MAX_IDENTIFIERS = 50_000
SAMPLE_INVALID = 5
_SEGMENT_KINDS = {"contactList", "inMarket", "location", "lookalike", "prospecting", "retargeting"}


class AudienceApi:
    """Search, create, describe, amend, empty and count contact lists of the advertisers one app may see."""

    def __init__(self, state: AccountState, advertiser_ids: frozenset[str]) -> None:
        self.state = state
        self.advertiser_ids = advertiser_ids

    def search(self, body: dict[str, Any], limit: int, offset: int, instance: str) -> dict[str, Any]:
        """One page of the visible segments matching the filters (AND'ed)."""
        if offset < 0:
            raise problem(400, "validation", "invalid-offset", "offset must not be negative", instance)
        filters = (body.get("data") or {}).get("attributes") or {}
        advertisers = filters.get("advertiserIds")
        ids = filters.get("audienceSegmentIds")
        types = filters.get("audienceSegmentTypes")
        found = [
            s
            for s in self.state.owned_by(*sorted(self.advertiser_ids))
            if (advertisers is None or s.advertiser_id in advertisers)
            and (ids is None or s.id in ids)
            and (types is None or s.kind in types)
        ]
        return {
            "data": [self._resource(s) for s in found[offset : offset + limit]],
            "meta": {"totalItems": len(found), "limit": limit, "offset": offset},
            "errors": [],
            "warnings": [],
        }

    def create(self, body: dict[str, Any], instance: str, refusals_as_200: bool = False) -> dict[str, Any]:
        """Create every requested contact list, or none when one is refused (its 4xx), or with `refusals_as_200`
        the others, naming the refused ones in `errors` (the spec's "partial success")."""
        wanted = [item.get("attributes") or {} for item in body.get("data") or []]
        if not wanted:
            raise problem(400, "validation", "missing-segments", "data must list at least one segment", instance)
        names = [attributes["name"] for attributes in wanted]
        with self.state.lock:
            refusals = [self._refusal(attributes, names, instance) for attributes in wanted]
            first = next((refusal for refusal in refusals if refusal), None)
            if first and not refusals_as_200:
                raise first
            created = [
                self.state.create(
                    str(a["advertiserId"]),
                    a["name"],
                    a.get("description"),
                    (a.get("lookalike") or {}).get("seedSegmentId"),
                    (a.get("lookalike") or {}).get("targetSize"),
                )
                for a, refusal in zip(wanted, refusals, strict=True)
                if refusal is None
            ]
        errors = [refusal.body["errors"][0] for refusal in refusals if refusal]
        return {"data": [self._resource(s) for s in created if s], "errors": errors, "warnings": []}

    def update(self, body: dict[str, Any], instance: str) -> dict[str, Any]:
        """Set the names and descriptions of the listed segments; unknown or foreign ones, and names another
        segment has, are named in `errors`."""
        items = body.get("data") or []
        if not items:
            raise problem(400, "validation", "missing-segments", "data must list at least one segment", instance)
        if any(set(item.get("attributes") or {}) - {"description", "name"} for item in items):
            detail = "the emulator only updates names and descriptions"
            raise problem(400, "validation", "unsupported-segment-update", detail, instance)
        updated, errors = [], []
        for item in items:
            attributes = item.get("attributes") or {}
            try:
                segment = self.own_segment(str(item.get("id")), instance)
                name = attributes.get("name")
                if name is not None and not self.state.rename(segment, name):
                    raise problem(400, "validation", "name-must-be-unique", f"a segment is named {name!r}", instance)
            except Reply as refusal:
                errors.append(refusal.body["errors"][0])
                continue
            description = attributes.get("description")
            if description is not None:  # NillableString: {"value": null} or {} clears it
                self.state.describe(segment, description.get("value"))
            updated.append(segment)
        return {"data": [self._resource(s) for s in updated], "errors": errors, "warnings": []}

    def amend(self, segment_id: str, body: dict[str, Any], instance: str, now: float) -> dict[str, Any]:
        """Add or remove the valid identifiers; count valid and invalid ones the way Criteo does."""
        attributes = body["data"]["attributes"]
        identifiers: list[str] = attributes["identifiers"]
        operation, kind = attributes["operation"], attributes.get("identifierType", "email")
        if not 1 <= len(identifiers) <= MAX_IDENTIFIERS:
            detail = f"identifiers must hold 1 to {MAX_IDENTIFIERS} items, not {len(identifiers)}"
            raise problem(400, "validation", "invalid-identifiers-count", detail, instance)
        if kind == "gum" and "gumCallerId" not in attributes:
            raise problem(400, "validation", "missing-gum-caller-id", "identifierType gum needs gumCallerId", instance)
        if kind != "gum" and "gumCallerId" in attributes:
            detail = "gumCallerId goes only with identifierType gum"
            raise problem(400, "validation", "unexpected-gum-caller-id", detail, instance)
        segment = self.own_segment(segment_id, instance)
        valid = [i for i in identifiers if is_valid(kind, i)]
        invalid = [i for i in identifiers if not is_valid(kind, i)]
        self.state.amend(segment, operation, kind, valid)
        result = {
            "contactListId": int(segment.id),
            "operation": operation,
            "identifierType": kind,
            "nbValidIdentifiers": len(valid),
            "nbInvalidIdentifiers": len(invalid),
            "sampleInvalidIdentifiers": invalid[:SAMPLE_INVALID],
            "requestDate": iso_timestamp(now),
        }
        return {"data": {"type": "ContactlistAmendment", "attributes": result}, "errors": [], "warnings": []}

    def empty(self, segment_id: str, instance: str) -> dict[str, Any]:
        """Remove every member of the contact list."""
        segment = self.own_segment(segment_id, instance)
        self.state.empty(segment)
        data = {
            "id": segment.id,
            "type": "AudienceContactlist",
            "attributes": {"name": segment.name, "description": segment.description},
        }
        return {"data": data, "errors": [], "warnings": []}

    def statistics(self, segment_id: str, instance: str) -> dict[str, Any]:
        """Identifier and match counts (the emulator matches every valid identifier at once)."""
        segment = self.own_segment(segment_id, instance)
        with self.state.lock:
            count = sum(len(members) for members in segment.members.values())
        attributes = {"numberOfIdentifiers": count, "numberOfMatches": count, "matchRate": 1.0 if count else 0.0}
        data = {"id": segment.id, "type": "ContactListStatistics", "attributes": attributes}
        return {"data": data, "errors": [], "warnings": []}

    def own_segment(self, segment_id: str, instance: str) -> Segment:
        """The segment, if it exists (else 404) and belongs to an advertiser of the app (else 403 audience-invalid)."""
        with self.state.lock:
            segment = self.state.segments.get(segment_id)
        if segment is None:
            raise problem(404, "validation", "audience-not-found", f"no audience segment {segment_id}", instance)
        if segment.advertiser_id not in self.advertiser_ids:
            detail = f"audience segment {segment_id} belongs to an advertiser this application can't access"
            raise problem(403, "access-control", "audience-invalid", detail, instance)
        return segment

    def _refusal(self, attributes: dict[str, Any], names: list[str], instance: str) -> Reply | None:
        """Why one requested segment can't be created, if it can't."""
        advertiser_id = str(attributes["advertiserId"])
        if advertiser_id not in self.advertiser_ids:
            detail = f"advertiser {attributes['advertiserId']} is not accessible to this application"
            return problem(403, "access-control", "advertiser-not-accessible", detail, instance)
        kinds = set(attributes) & _SEGMENT_KINDS
        if kinds not in ({"contactList"}, {"lookalike"}):
            detail = "the emulator creates contact lists and lookalikes: give one of contactList or lookalike"
            return problem(400, "validation", "invalid-segment-type", detail, instance)
        if "lookalike" in attributes:
            seed = self.state.segments.get(str(attributes["lookalike"]["seedSegmentId"]))
            if seed is None or seed.advertiser_id != advertiser_id or seed.seed:
                detail = "seedSegmentId must be one of the advertiser's contact lists"
                return problem(400, "validation", "invalid-seed-segment", detail, instance)
        name = attributes["name"]
        if names.count(name) > 1 or self.state.find(advertiser_id, name):
            return problem(400, "validation", "name-must-be-unique", f"a segment is named {name!r}", instance)
        return None

    @staticmethod
    def _resource(segment: Segment) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "name": segment.name,
            "advertiserId": segment.advertiser_id,
            "type": segment.kind,
            "description": segment.description,
            "createdAt": segment.created_at,
            "updatedAt": segment.updated_at,
        }
        if segment.seed:
            attributes["lookalike"] = {"seedSegmentId": segment.seed, "targetSize": segment.target_size}
        else:
            attributes["contactList"] = {"isReadOnly": False}
        return {"id": segment.id, "type": "AudienceSegment", "attributes": attributes}
