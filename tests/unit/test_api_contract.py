"""Every operation the stand-in implements, driven through pydo, with the request pydo
sends and the response the stand-in gives both validated against DigitalOcean's OpenAPI
spec. The same walk runs against the real lab (e2e): the one `lifeboat lab up` started, or
the one LIFEBOAT_API_URL/LIFEBOAT_API_TOKEN name."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from jsonschema_path import SchemaPath
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from lab import lifecycle
from lab.api import create_app
from lab.api.app import ROUTERS
from lab.api.testing import RecordingCloud, serve
from tasks.digitalocean import client as do_client

# CI lays shared/ beside the clone, as it is beside the work tree here.
SHARED = Path(__file__).resolve().parents[3] / "shared"
ENTRY = SHARED / "specs/digitalocean-openapi/specification/DigitalOcean-public.v2.yaml"
SPEC_HOST = "https://api.digitalocean.com"  # the spec's only server; paths are what matter
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdmI5ZC1d3tEtD3NjbQ0V6eVtbqdvtU7x/oX5Z6ZXkA ci@lab"


# -- openapi-core adapters for what azure-core saw on the wire -------------------------


@dataclass
class WireRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes | None
    host_url: str = SPEC_HOST
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(self.query)),
            header=Headers(self.headers),
            cookie=ImmutableMultiDict(),
        )

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/json").lower()


@dataclass
class WireResponse:
    status_code: int
    data: bytes
    headers: Headers

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/json").lower()


@dataclass
class Exchange:
    request: WireRequest
    response: WireResponse

    @property
    def label(self) -> str:
        return f"{self.request.method.upper()} {self.request.path} -> {self.response.status_code}"


def capture(pipeline_response: Any) -> Exchange:
    req, resp = pipeline_response.http_request, pipeline_response.http_response
    url = urlsplit(req.url)
    body = req.content
    if isinstance(body, str):
        body = body.encode()
    elif body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    request = WireRequest(req.method.lower(), unquote(url.path), url.query, dict(req.headers), body)
    response = WireResponse(resp.status_code, resp.body(), Headers(dict(resp.headers)))
    return Exchange(request, response)


# Two defects in the published spec would make it reject what DigitalOcean itself sends
# and accepts; a session copy of the spec fixes exactly these and nothing else:
# - load balancer schemas write `properties: {$ref: attributes.yml#/x}` (a $ref standing
#   for a map of properties), which is not JSON Schema and crashes the validator;
# - the ssh key path parameter is built from `readOnly` attributes, which a validator
#   must reject in requests, so GET /v2/account/keys/{id} could never be valid.
PROPERTIES_REF = re.compile(
    r"^(\s*)properties:\n\s*\$ref: '([^'#]*)#/"
    r"(load_balancer_droplet_ids|load_balancer_droplet_tag)'",
    re.M,
)
LB_PROPERTY = {"load_balancer_droplet_ids": "droplet_ids", "load_balancer_droplet_tag": "tag"}


def _inline_properties(match: re.Match[str]) -> str:
    indent, file, anchor = match.groups()
    name = LB_PROPERTY[anchor]
    return f"{indent}properties:\n{indent}  {name}:\n{indent}    $ref: '{file}#/{anchor}/{name}'"


def patched_spec(root: Path) -> Path:
    source = ENTRY.parent
    shutil.copytree(source, root, dirs_exist_ok=True)
    for path in (root / "resources/load_balancers").rglob("*.yml"):
        text = path.read_text()
        fixed = PROPERTIES_REF.sub(_inline_properties, text)
        if fixed != text:
            path.write_text(fixed)
    for name in ("ssh_key_id.yml", "ssh_key_fingerprint.yml"):
        path = root / "resources/ssh_keys/attributes" / name
        path.write_text(path.read_text().replace("readOnly: true", ""))
    return root / ENTRY.name


@pytest.fixture(scope="session")
def spec(tmp_path_factory: pytest.TempPathFactory) -> OpenAPI:
    entry = patched_spec(tmp_path_factory.mktemp("spec"))
    return OpenAPI(SchemaPath.from_file_path(str(entry)), config=Config(spec_validator_cls=None))


# -- servers: in-process over a recording cloud, or the real lab -----------------------


@dataclass
class Target:
    url: str
    token: str
    timeout: float  # how long a droplet may take to boot


@pytest.fixture(params=["unit", pytest.param("lab", marks=pytest.mark.e2e)], scope="module")
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "lab":
        url, token = os.environ.get("LIFEBOAT_API_URL"), os.environ.get("LIFEBOAT_API_TOKEN")
        if not (url and token):
            info = lifecycle.info()
            if not info.get("up"):
                pytest.fail("the local cloud is not up: run `lifeboat lab up` (make test does)")
            url, token = info["api_url"], info["api_token"]
        yield Target(url, token, timeout=300)
        return
    state = tmp_path_factory.mktemp("contract") / "state.json"
    app = create_app(RecordingCloud(), "contract-token", state, poll_interval=0.02)
    with serve(app) as url:
        yield Target(url, "contract-token", timeout=10)


class Recorder:
    def __init__(self, target: Target) -> None:
        self.exchanges: list[Exchange] = []
        self.target = target
        self.client = do_client(target.token, target.url, raw_response_hook=self._hook)

    def _hook(self, pipeline_response: Any) -> None:
        self.exchanges.append(capture(pipeline_response))

    def wait(self, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.target.timeout
        while not (value := check()):
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
        return value


def walk(r: Recorder) -> None:
    """Call every implemented operation at least once (and a few failing ones)."""
    c = r.client
    run = f"ct{int(time.time() * 1000) % 10**8}"  # unique names when walking a shared lab

    c.account.get()
    c.regions.list()
    c.sizes.list(per_page=2, page=2)
    c.images.list(type="distribution")
    c.images.get("debian-12-x64")
    c.images.get(c.images.list()["images"][0]["id"])

    key = c.ssh_keys.create(body={"name": f"{run}-key", "public_key": ED25519})["ssh_key"]
    c.ssh_keys.list()
    c.ssh_keys.get(key["id"])
    c.ssh_keys.get(key["fingerprint"])
    c.ssh_keys.update(key["id"], body={"name": f"{run}-renamed"})

    tag = f"{run}-db"
    c.tags.create(body={"name": tag})
    c.tags.list()

    vpc = c.vpcs.create(body={"name": f"{run}-vpc", "region": "fra1", "description": "contract"})[
        "vpc"
    ]
    c.vpcs.list()
    c.vpcs.get(vpc["id"])
    c.vpcs.update(vpc["id"], body={"name": f"{run}-vpc2", "description": "renamed"})
    c.vpcs.patch(vpc["id"], body={"description": "patched"})

    single = c.droplets.create(
        body={
            "name": f"{run}-web",
            "region": "fra1",
            "size": "s-1vcpu-1gb",
            "image": "debian-12-x64",
            "ssh_keys": [key["fingerprint"]],
            "vpc_uuid": vpc["id"],
            "user_data": "#cloud-config\n",
            "monitoring": True,
        }
    )["droplet"]
    multi = c.droplets.create(
        body={
            "names": [f"{run}-db1", f"{run}-db2"],
            "region": "fra1",
            "size": "s-2vcpu-4gb",
            "image": "debian-12-x64",
            "ssh_keys": [key["id"]],
            "tags": [tag],
        }
    )["droplets"]
    ids = [single["id"]] + [d["id"] for d in multi]
    for droplet_id in ids:
        r.wait(lambda i=droplet_id: c.droplets.get(i)["droplet"]["status"] == "active")
    c.droplets.list()
    c.droplets.list(tag_name=tag, per_page=1, page=2)
    c.droplets.list(name=f"{run}-web")
    c.droplets.get(single["id"])
    c.vpcs.list_members(vpc["id"])
    c.tags.get(tag)
    c.tags.assign_resources(
        tag, body={"resources": [{"resource_id": str(single["id"]), "resource_type": "droplet"}]}
    )
    c.tags.unassign_resources(
        tag, body={"resources": [{"resource_id": str(single["id"]), "resource_type": "droplet"}]}
    )

    for kind in ("power_off", "power_on", "shutdown", "power_on", "reboot", "power_cycle"):
        action = c.droplet_actions.post(single["id"], body={"type": kind})["action"]
        r.wait(lambda a=action: c.actions.get(a["id"])["action"]["status"] != "in-progress")
        c.droplet_actions.get(single["id"], action["id"])
    c.droplet_actions.list(single["id"], per_page=3)
    c.actions.list(per_page=5)

    rule_in = {"protocol": "tcp", "ports": "5432", "sources": {"tags": [tag]}}
    rule_out = {"protocol": "udp", "ports": "53", "destinations": {"addresses": ["0.0.0.0/0"]}}
    fw = c.firewalls.create(
        body={
            "name": f"{run}-fw",
            "droplet_ids": [multi[0]["id"]],
            "tags": [tag],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["198.18.0.0/16"]}}
            ],
            "outbound_rules": [rule_out],
        }
    )["firewall"]
    c.firewalls.list()
    c.firewalls.get(fw["id"])
    c.firewalls.update(
        fw["id"],
        body={
            "name": f"{run}-fw2",
            "tags": [tag],
            "inbound_rules": [rule_in],
            "outbound_rules": [rule_out],
        },
    )
    c.firewalls.assign_droplets(fw["id"], body={"droplet_ids": [single["id"]]})
    c.firewalls.delete_droplets(fw["id"], body={"droplet_ids": [single["id"]]})
    c.firewalls.delete_tags(fw["id"], body={"tags": [tag]})
    c.firewalls.add_tags(fw["id"], body={"tags": [tag]})
    icmp = {"protocol": "icmp", "ports": "0", "sources": {"droplet_ids": [single["id"]]}}
    c.firewalls.add_rules(fw["id"], body={"inbound_rules": [icmp]})
    c.firewalls.delete_rules(fw["id"], body={"inbound_rules": [icmp]})
    c.droplets.list_firewalls(multi[0]["id"])

    forward = {
        "entry_protocol": "tcp",
        "entry_port": 5432,
        "target_protocol": "tcp",
        "target_port": 5432,
    }
    extra = {
        "entry_protocol": "http",
        "entry_port": 80,
        "target_protocol": "http",
        "target_port": 80,
    }
    health = {
        "protocol": "http",
        "port": 8008,
        "path": "/primary",
        "check_interval_seconds": 3,
        "response_timeout_seconds": 3,
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
    }
    lb = c.load_balancers.create(
        body={
            "name": f"{run}-lb",
            "region": "fra1",
            "droplet_ids": [multi[0]["id"]],
            "forwarding_rules": [forward],
            "health_check": health,
        }
    )["load_balancer"]
    r.wait(lambda: c.load_balancers.get(lb["id"])["load_balancer"]["status"] != "new")
    c.load_balancers.list()
    c.load_balancers.add_droplets(lb["id"], body={"droplet_ids": [multi[1]["id"]]})
    c.load_balancers.remove_droplets(lb["id"], body={"droplet_ids": [multi[1]["id"]]})
    c.load_balancers.add_forwarding_rules(lb["id"], body={"forwarding_rules": [extra]})
    c.load_balancers.remove_forwarding_rules(lb["id"], body={"forwarding_rules": [extra]})
    c.load_balancers.update(
        lb["id"],
        body={
            "name": f"{run}-lb2",
            "region": "fra1",
            "tag": tag,
            "forwarding_rules": [forward],
            "health_check": {**health, "protocol": "tcp"},
        },
    )
    tagged_lb = c.load_balancers.create(
        body={"name": f"{run}-lbt", "region": "fra1", "tag": tag, "forwarding_rules": [forward]}
    )["load_balancer"]

    # failures the spec describes
    c.droplets.get(1)
    c.ssh_keys.get(1)
    with pytest.raises(Exception):  # noqa: B017 - pydo raises HttpResponseError for 422
        c.droplets.create(body={"name": "x", "size": "nope", "image": "debian-12-x64"})

    c.load_balancers.delete(lb["id"])
    c.load_balancers.delete(tagged_lb["id"])
    c.firewalls.delete(fw["id"])
    c.droplets.destroy(single["id"])
    c.droplets.destroy_by_tag(tag_name=tag)
    r.wait(lambda: c.vpcs.list_members(vpc["id"])["meta"]["total"] == 0)
    c.vpcs.delete(vpc["id"])
    c.tags.delete(tag)
    c.ssh_keys.delete(key["fingerprint"])


@pytest.fixture(scope="module")
def walked(target: Target) -> list[Exchange]:
    recorder = Recorder(target)
    walk(recorder)
    return recorder.exchanges


def test_requests_and_responses_match_the_spec(spec: OpenAPI, walked: list[Exchange]) -> None:
    failures = []
    for exchange in walked:
        try:
            spec.validate_request(exchange.request)
        except Exception as e:  # noqa: BLE001 - collect them all, report at once
            failures.append(f"request  {exchange.label}: {_why(e)}")
        try:
            spec.validate_response(exchange.request, exchange.response)
        except Exception as e:  # noqa: BLE001
            failures.append(f"response {exchange.label}: {_why(e)}")
    assert not failures, "\n".join(failures)


def test_the_walk_covers_every_route(walked: list[Exchange]) -> None:
    routes = {
        (method, route.path)
        for module in ROUTERS
        for route in module.router.routes
        for method in route.methods
    }
    seen = set()
    for exchange in walked:
        for method, path in routes:
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"
            if method.lower() == exchange.request.method and re.match(
                pattern, exchange.request.path
            ):
                seen.add((method, path))
    assert routes - seen == set()


def test_a_wrong_shape_fails_validation(spec: OpenAPI, walked: list[Exchange]) -> None:
    """The validation above can fail: an id sent as a string is caught, both ways."""
    get = next(
        e
        for e in walked
        if e.request.method == "get"
        and re.fullmatch(r"/v2/droplets/\d+", e.request.path)
        and e.response.status_code == 200
    )
    spec.validate_response(get.request, get.response)
    body = json.loads(get.response.data)
    body["droplet"]["id"] = str(body["droplet"]["id"])
    broken = WireResponse(200, json.dumps(body).encode(), get.response.headers)
    with pytest.raises(Exception, match="(?i)invalid|valid"):
        spec.validate_response(get.request, broken)

    post = next(
        e
        for e in walked
        if e.request.method == "post"
        and re.fullmatch(r"/v2/firewalls/[^/]+/droplets", e.request.path)
    )
    spec.validate_request(post.request)
    bad = copy.copy(post.request)
    bad.body = json.dumps({"droplet_ids": ["not-a-number"]}).encode()
    with pytest.raises(Exception, match="(?i)invalid|valid"):
        spec.validate_request(bad)

    # the load balancer schemas (patched above) still check what they describe
    lb = next(
        e
        for e in walked
        if e.request.method == "get" and e.request.path.startswith("/v2/load_balancers/")
    )
    spec.validate_response(lb.request, lb.response)
    body = json.loads(lb.response.data)
    body["load_balancer"]["status"] = "on-fire"
    with pytest.raises(Exception, match="(?i)invalid|valid"):
        spec.validate_response(
            lb.request, WireResponse(200, json.dumps(body).encode(), lb.response.headers)
        )


def _why(error: Exception) -> str:
    causes = [str(error)]
    cause = error.__cause__
    while cause is not None:
        detail = getattr(cause, "schema_errors", None)
        causes.append(str(cause) if not detail else "; ".join(e.message for e in detail))
        cause = cause.__cause__
    return " <- ".join(causes)
