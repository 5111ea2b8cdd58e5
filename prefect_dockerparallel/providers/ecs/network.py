"""Networking for ECS clusters: account-level pieces found by tag or created once, plus the
per-run security group that opens Redis only to the flow runner and to the cluster itself.

Account-level pieces (VPC, subnet, internet gateway, route table) carry
`dockerparallel-network=<ecs cluster name>` and are reused by every run; the per-run security
group carries the cluster's labels so teardown and `clusters cleanup` can find it.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..base import ProviderError
from .aws import NETWORK_TAG, aws_tags, error_code
from .settings import IP_CHECK_URL

log = logging.getLogger("prefect_dockerparallel.ecs")

DEFAULT_VPC_CIDR = "10.73.0.0/16"


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnet_id: str


def _tag_filter(key: str, value: str) -> dict[str, Any]:
    return {"Name": f"tag:{key}", "Values": [value]}


def _name_tags(network: str, what: str) -> list[dict[str, str]]:
    return aws_tags({NETWORK_TAG: network, "Name": f"{network}-{what}"})


def _spec(resource: str, tags: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource, "Tags": tags}]


def ensure_network(
    ec2: Any,
    network: str,
    *,
    vpc_id: str | None = None,
    subnet_id: str | None = None,
    internet_gateway_id: str | None = None,
    route_table_id: str | None = None,
) -> Network:
    """Find by tag or create what was not given. A given subnet's routing is left alone."""
    if subnet_id and not vpc_id:
        subnets = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        vpc_id = subnets[0]["VpcId"]
    vpc_id = vpc_id or _ensure_vpc(ec2, network)
    created_subnet = False
    if not subnet_id:
        subnet_id, created_subnet = _ensure_subnet(ec2, network, vpc_id)
    if created_subnet or internet_gateway_id or route_table_id:
        igw = internet_gateway_id or _ensure_igw(ec2, network, vpc_id)
        _ensure_routes(ec2, network, vpc_id, subnet_id, igw, route_table_id)
    return Network(vpc_id=vpc_id, subnet_id=subnet_id)


def _ensure_vpc(ec2: Any, network: str) -> str:
    found = ec2.describe_vpcs(Filters=[_tag_filter(NETWORK_TAG, network)])["Vpcs"]
    if found:
        return str(found[0]["VpcId"])
    vpc = ec2.create_vpc(
        CidrBlock=DEFAULT_VPC_CIDR, TagSpecifications=_spec("vpc", _name_tags(network, "vpc"))
    )["Vpc"]
    vpc_id = str(vpc["VpcId"])
    # Fargate tasks resolve registries by name; hostnames also give tasks private DNS names.
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
    log.info("created VPC %s (%s) for ECS network %s", vpc_id, DEFAULT_VPC_CIDR, network)
    return vpc_id


def _ensure_subnet(ec2: Any, network: str, vpc_id: str) -> tuple[str, bool]:
    filters = [{"Name": "vpc-id", "Values": [vpc_id]}, _tag_filter(NETWORK_TAG, network)]
    found = ec2.describe_subnets(Filters=filters)["Subnets"]
    if found:
        return str(found[0]["SubnetId"]), False
    vpc = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
    taken = [
        ipaddress.ip_network(s["CidrBlock"])
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    ]
    cidr = next(
        (
            c
            for c in ipaddress.ip_network(vpc["CidrBlock"]).subnets(
                new_prefix=20 if vpc["CidrBlock"].endswith("/16") else 24
            )
            if not any(c.overlaps(t) for t in taken)
        ),
        None,
    )
    if cidr is None:
        raise ProviderError(f"VPC {vpc_id} has no free address range for a subnet: pass subnet_id")
    subnet = ec2.create_subnet(
        VpcId=vpc_id,
        CidrBlock=str(cidr),
        TagSpecifications=_spec("subnet", _name_tags(network, "subnet")),
    )["Subnet"]
    subnet_id = str(subnet["SubnetId"])
    ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
    log.info("created subnet %s (%s) in %s", subnet_id, cidr, vpc_id)
    return subnet_id, True


def _ensure_igw(ec2: Any, network: str, vpc_id: str) -> str:
    attached = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])[
        "InternetGateways"
    ]
    if attached:
        return str(attached[0]["InternetGatewayId"])
    igw = ec2.create_internet_gateway(
        TagSpecifications=_spec("internet-gateway", _name_tags(network, "igw"))
    )["InternetGateway"]
    igw_id = str(igw["InternetGatewayId"])
    ec2.attach_internet_gateway(InternetGatewayId=igw_id, VpcId=vpc_id)
    log.info("created internet gateway %s for %s", igw_id, vpc_id)
    return igw_id


def _ensure_routes(
    ec2: Any, network: str, vpc_id: str, subnet_id: str, igw_id: str, route_table_id: str | None
) -> None:
    if route_table_id:
        table = ec2.describe_route_tables(RouteTableIds=[route_table_id])["RouteTables"][0]
    else:
        filters = [{"Name": "vpc-id", "Values": [vpc_id]}, _tag_filter(NETWORK_TAG, network)]
        tables = ec2.describe_route_tables(Filters=filters)["RouteTables"]
        if tables:
            table = tables[0]
        else:
            table = ec2.create_route_table(
                VpcId=vpc_id, TagSpecifications=_spec("route-table", _name_tags(network, "routes"))
            )["RouteTable"]
            table.setdefault("Routes", [])
            table.setdefault("Associations", [])
    rt_id = str(table["RouteTableId"])
    if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table.get("Routes", [])):
        ec2.create_route(RouteTableId=rt_id, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw_id)
    if not any(a.get("SubnetId") == subnet_id for a in table.get("Associations", [])):
        ec2.associate_route_table(RouteTableId=rt_id, SubnetId=subnet_id)


def detect_egress_cidr(url: str = IP_CHECK_URL, timeout: float = 5.0) -> str:
    """This machine's public IPv4 as a /32, as AWS sees it (the Redis ingress source)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
            text = resp.read(64).decode().strip()
        ip = ipaddress.IPv4Address(text)
    except (OSError, ValueError) as exc:
        raise ProviderError(
            f"could not detect this machine's public IP from {url} ({exc}); set runner_cidr "
            "(e.g. '203.0.113.7/32') on the ECSFargateProvider block"
        ) from None
    return f"{ip}/32"


def create_run_security_group(
    ec2: Any,
    vpc_id: str,
    name: str,
    labels: dict[str, str],
    runner_cidr: str,
    port: int,
    ssh: bool = False,
) -> str:
    """Per-run group: Redis port from the runner's /32 and from members of the group only."""
    found = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [name]}]
    )["SecurityGroups"]
    if found:
        return str(found[0]["GroupId"])
    sg_id = str(
        ec2.create_security_group(
            GroupName=name,
            Description="prefect-dockerparallel: Redis from the flow runner and the cluster only",
            VpcId=vpc_id,
            TagSpecifications=_spec("security-group", aws_tags({**labels, "Name": name})),
        )["GroupId"]
    )
    perms: list[dict[str, Any]] = [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": runner_cidr, "Description": "flow runner"}],
            "UserIdGroupPairs": [{"GroupId": sg_id, "Description": "cluster members"}],
        }
    ]
    if ssh:
        perms.append(
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": runner_cidr, "Description": "ssh from flow runner"}],
            }
        )
    ec2.authorize_security_group_ingress(
        GroupId=sg_id,
        IpPermissions=perms,
        TagSpecifications=_spec("security-group-rule", aws_tags(labels)),
    )
    return sg_id


def find_run_security_groups(ec2: Any, cluster: str | None = None) -> list[dict[str, Any]]:
    """Security groups tagged with a dockerparallel cluster (one cluster, or all of them)."""
    flt = (
        _tag_filter("dockerparallel-cluster", cluster)
        if cluster
        else {"Name": "tag-key", "Values": ["dockerparallel-cluster"]}
    )
    return list(ec2.describe_security_groups(Filters=[flt])["SecurityGroups"])


def delete_security_group(ec2: Any, group_id: str, deadline_s: float, poll: float = 2.0) -> bool:
    """Delete, retrying while stopped tasks' network interfaces still hold the group."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return True
        except Exception as exc:  # botocore ClientError
            code = error_code(exc)
            if code == "InvalidGroup.NotFound":
                return True
            if code != "DependencyViolation" or time.monotonic() >= deadline:
                log.warning(
                    "could not delete security group %s (%s); `prefect-dockerparallel clusters "
                    "cleanup --provider ecs` removes it later",
                    group_id,
                    code or exc,
                )
                return False
        time.sleep(poll)
