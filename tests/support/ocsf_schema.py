"""The OCSF 1.3.0 requirements the export is checked against (no network at test time).

Encoded from the OCSF schema sources (github.com/ocsf/ocsf-schema): `events/base_event.json`
with the classification and occurrence traits (required: activity_id, category_uid,
class_uid, metadata, severity_id, time, type_uid), `objects/metadata.json` (required:
product, version), `objects/product.json` (required: vendor_name),
`events/iam/authentication.json` (required: user; at least one of service, dst_endpoint;
activity ids 0-6, 99), `events/application/api_activity.json` (required: actor, api,
src_endpoint; activity ids 0-4, 99), `objects/api.json` (required: operation),
`objects/actor.json` (at least one of process, user, invoked_by, session, app_name),
`objects/user.json` (at least one of account, name, uid), `objects/network_endpoint.json`
(at least one of ip, uid, name, hostname, ...). type_uid = class_uid * 100 + activity_id;
category_uid is class_uid's thousands digit.
"""

from __future__ import annotations

from typing import Any

BASE_REQUIRED = (
    "activity_id",
    "category_uid",
    "class_uid",
    "metadata",
    "severity_id",
    "time",
    "type_uid",
)
METADATA_REQUIRED = ("product", "version")
PRODUCT_REQUIRED = ("vendor_name",)
CLASSES: dict[int, dict[str, Any]] = {
    3002: {
        "name": "Authentication",
        "required": ("user",),
        "at_least_one": ("service", "dst_endpoint"),
        "activities": {0, 1, 2, 3, 4, 5, 6, 99},
    },
    6003: {
        "name": "API Activity",
        "required": ("actor", "api", "src_endpoint"),
        "at_least_one": (),
        "activities": {0, 1, 2, 3, 4, 99},
    },
}
API_REQUIRED = ("operation",)
ACTOR_AT_LEAST_ONE = ("process", "user", "invoked_by", "session", "app_name")
USER_AT_LEAST_ONE = ("account", "name", "uid")
ENDPOINT_AT_LEAST_ONE = ("ip", "uid", "name", "hostname", "domain", "instance_uid", "interface_uid")
SEVERITIES = {0, 1, 2, 3, 4, 5, 6, 99}


def problems(event: dict[str, Any]) -> list[str]:
    """Every way `event` violates the encoded requirements (empty when valid)."""
    out = [f"missing {k}" for k in BASE_REQUIRED if k not in event]
    if out:
        return out
    spec = CLASSES.get(event["class_uid"])
    if spec is None:
        return [f"unexpected class_uid {event['class_uid']}"]
    out += [f"{spec['name']}: missing {k}" for k in spec["required"] if k not in event]
    if spec["at_least_one"] and not any(k in event for k in spec["at_least_one"]):
        out.append(f"{spec['name']}: none of {spec['at_least_one']}")
    if event["activity_id"] not in spec["activities"]:
        out.append(f"activity_id {event['activity_id']} not in {spec['name']}")
    if event["type_uid"] != event["class_uid"] * 100 + event["activity_id"]:
        out.append("type_uid is not class_uid * 100 + activity_id")
    if event["category_uid"] != event["class_uid"] // 1000:
        out.append("category_uid does not match class_uid")
    if event["severity_id"] not in SEVERITIES:
        out.append("bad severity_id")
    if not isinstance(event["time"], int) or event["time"] <= 0:
        out.append("time is not epoch milliseconds")
    metadata = event["metadata"]
    out += [f"metadata: missing {k}" for k in METADATA_REQUIRED if k not in metadata]
    out += [
        f"metadata.product: missing {k}"
        for k in PRODUCT_REQUIRED
        if k not in metadata.get("product", {})
    ]
    if "api" in event:
        out += [f"api: missing {k}" for k in API_REQUIRED if k not in event["api"]]
    if "actor" in event and not any(k in event["actor"] for k in ACTOR_AT_LEAST_ONE):
        out.append("actor: empty")
    for user in (event.get("user"), event.get("actor", {}).get("user")):
        if user is not None and not any(k in user for k in USER_AT_LEAST_ONE):
            out.append("user: none of account, name, uid")
    endpoint = event.get("src_endpoint")
    if endpoint is not None and not any(k in endpoint for k in ENDPOINT_AT_LEAST_ONE):
        out.append("src_endpoint: empty")
    return out
