"""What the Ray head's AWS policy allows, asked the way EC2 asks IAM: a small evaluator of identity
policies and the authorization requests behind the calls Ray's AWS node provider makes.

The evaluator knows what skytrain's policies use: Allow and Deny statements, ``*``/``?`` wildcards in
actions and resources, and the condition operators StringEquals, StringLike and
ForAllValues:StringNotEquals (an operator it does not know raises, so a new one cannot pass
unnoticed). As in IAM, a single-valued condition on a key the request lacks does not match. It is
not AWS's evaluator: it answers whether skytrain's statements grant a request, not whether IAM
would accept the policy's syntax (`terraform apply` against AWS does that).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CLUSTER_TAG = "ray-cluster-name"  # ray.autoscaler.tags.TAG_RAY_CLUSTER_NAME
ACCOUNT = "123456789012"
# Stand-ins for the ids EC2 would assign or resolve.
IDS = {
    "instance": "i-0123456789abcdef0",
    "volume": "vol-0123456789abcdef0",
    "network-interface": "eni-0123456789abcdef0",
    "spot-instances-request": "sir-0123456a",
    "image": "ami-0123456789abcdef0",
    "snapshot": "snap-0123456789abcdef0",
}


def _values(value) -> list:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, text: str, case_sensitive: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, 0 if case_sensitive else re.IGNORECASE) is not None


def _condition_holds(operator: str, key: str, expected, context: dict) -> bool:
    wanted = [str(v) for v in _values(expected)]
    if operator == "ForAllValues:StringNotEquals":
        return all(v not in wanted for v in _values(context.get(key, [])))
    if key not in context:
        return False
    actual = context[key]
    if isinstance(actual, list):
        raise ValueError(f"{key} is multivalued: {operator} needs ForAllValues/ForAnyValue")
    if operator == "StringEquals":
        return str(actual) in wanted
    if operator == "StringLike":
        return any(_wildcard(w, str(actual)) for w in wanted)
    raise ValueError(f"condition operator {operator} is not known to this evaluator")


def _matches(statement: dict, action: str, resource: str, context: dict) -> bool:
    if "NotAction" in statement or "NotResource" in statement:
        raise ValueError("NotAction/NotResource are not known to this evaluator")
    if not any(_wildcard(a, action, case_sensitive=False) for a in _values(statement["Action"])):
        return False
    if not any(_wildcard(r, resource) for r in _values(statement["Resource"])):
        return False
    return all(
        _condition_holds(operator, key, expected, context)
        for operator, keys in statement.get("Condition", {}).items()
        for key, expected in keys.items()
    )


def allowed(policy: dict, action: str, resource: str, context: dict | None = None) -> bool:
    """Whether ``policy`` grants ``action`` on ``resource`` with these condition keys (no explicit Deny)."""
    context = context or {}
    statements = _values(policy["Statement"])
    hits = [s["Effect"] for s in statements if _matches(s, action, resource, context)]
    return "Allow" in hits and "Deny" not in hits


def _tags(request: dict, resource_type: str) -> dict[str, str]:
    return {
        tag["Key"]: tag["Value"]
        for spec in request.get("TagSpecifications", [])
        if spec["ResourceType"] == resource_type
        for tag in spec["Tags"]
    }


def run_instances_checks(request: dict, region: str) -> list[tuple[str, str, dict]]:
    """(action, resource ARN, condition keys) of each authorization a RunInstances ``request`` needs:
    RunInstances on every resource it creates or uses, CreateTags on each resource it tags."""
    ec2 = f"arn:aws:ec2:{region}"
    created = ["instance", "volume", "network-interface"]
    if request.get("InstanceMarketOptions", {}).get("MarketType") == "spot":
        created.append("spot-instances-request")
    used = [f"{ec2}::image/{IDS['image']}", f"{ec2}::snapshot/{IDS['snapshot']}"]
    used += [f"{ec2}:{ACCOUNT}:subnet/{request['SubnetId']}"] if "SubnetId" in request else []
    used += [f"{ec2}:{ACCOUNT}:security-group/{sg}" for sg in request.get("SecurityGroupIds", [])]
    used += [f"{ec2}:{ACCOUNT}:key-pair/{request['KeyName']}"] if "KeyName" in request else []
    if "LaunchTemplate" in request:
        used.append(f"{ec2}:{ACCOUNT}:launch-template/lt-0123456789abcdef0")
    checks = []
    for kind in created:
        tags = _tags(request, kind)
        context = {f"aws:RequestTag/{k}": v for k, v in tags.items()} | {"aws:RequestedRegion": region}
        if tags:
            context["aws:TagKeys"] = sorted(tags)
        if kind == "instance":
            context["ec2:InstanceType"] = request["InstanceType"]
        arn = f"{ec2}:{ACCOUNT}:{kind}/{IDS[kind]}"
        checks.append(("ec2:RunInstances", arn, context))
        if tags:
            checks.append(("ec2:CreateTags", arn, context | {"ec2:CreateAction": "RunInstances"}))
    checks += [("ec2:RunInstances", arn, {"aws:RequestedRegion": region}) for arn in used]
    return checks


def refused(policy: dict, checks: Iterable[tuple[str, str, dict]]) -> list[tuple[str, str]]:
    return [(action, arn) for action, arn, context in checks if not allowed(policy, action, arn, context)]


def instance_arn(region: str) -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{IDS['instance']}"
