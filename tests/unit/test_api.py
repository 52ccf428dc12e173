"""Semantics of the DigitalOcean API stand-in, driven through pydo against a recording
machine layer."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from lab.api import create_app
from lab.api.testing import RecordingCloud, serve
from lab.config import LOAD_BALANCER_POOL, PUBLIC_DROPLET_POOL
from lifeboat.waiting import wait_until
from tasks.digitalocean import client as do_client

TOKEN = "unit-test-token"
DEBIAN = {"size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "nyc3"}


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.state_file = tmp_path / "state.json"
        self.cloud = RecordingCloud()

    def start(self) -> None:
        app = create_app(self.cloud, TOKEN, self.state_file, poll_interval=0.02)
        self._serving = serve(app)
        self.url = self._serving.__enter__()
        self.client = do_client(TOKEN, self.url, raw_response_hook=self._remember)

    def _remember(self, response: Any) -> None:
        self.last = response.http_response

    def error_of(self, call: Callable[[], Any]) -> tuple[int, dict]:
        """Status and body of a failing call: pydo raises for some statuses and returns
        the error body for the ones the spec lists (such as 404)."""
        with contextlib.suppress(HttpResponseError):
            call()
        assert self.last.status_code >= 400, self.last.status_code
        return self.last.status_code, json.loads(self.last.text())

    def stop(self) -> None:
        self._serving.__exit__(None, None, None)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    lab.start()
    yield lab
    lab.stop()


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The API's background work (its poller, the fake machine) settles within a moment,
    but a loaded 2-core machine can stretch that moment: a generous bound."""
    return wait_until("the lab API's state", check, timeout=timeout, every=0.02)


def create(lab: Lab, **body: Any) -> dict:
    return lab.client.droplets.create(body={**DEBIAN, **body})


def active(lab: Lab, droplet_id: int) -> dict:
    return wait_for(
        lambda: (d := lab.client.droplets.get(droplet_id)["droplet"])["status"] == "active" and d
    )


def test_wrong_or_missing_token_is_401(lab: Lab) -> None:
    with pytest.raises(HttpResponseError) as info:
        do_client("wrong", lab.url).droplets.list()
    status, body = info.value.status_code, info.value.response.json()
    assert status == 401
    assert body == {"id": "unauthorized", "message": "Unable to authenticate you."}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{lab.url}/v2/account")
    assert info.value.code == 401


def test_unknown_droplet_is_404_with_do_body(lab: Lab) -> None:
    status, body = lab.error_of(lambda: lab.client.droplets.get(999))
    assert (status, body["id"]) == (404, "not_found")
    assert body["message"] == "The resource you were accessing could not be found."


def test_unknown_size_image_or_region_is_422_and_creates_nothing(lab: Lab) -> None:
    for bad, word in (
        ({"size": "s-64vcpu"}, "s-64vcpu"),
        ({"image": "arch"}, "arch"),
        ({"region": "lon1"}, "lon1"),
    ):
        status, body = lab.error_of(lambda bad=bad: create(lab, name="x", **bad))
        assert status == 422 and body["id"] == "unprocessable_entity"
        assert word in body["message"]
    assert lab.client.droplets.list()["droplets"] == []
    assert lab.cloud.named("create_droplet") == []


def test_create_several_with_names_then_list_by_tag_across_pages(lab: Lab) -> None:
    made = create(lab, names=["db-1", "db-2", "db-3"], tags=["db"])
    assert [d["name"] for d in made["droplets"]] == ["db-1", "db-2", "db-3"]
    assert len(made["links"]["actions"]) == 3
    create(lab, name="web-1", tags=["web"])

    first = lab.client.droplets.list(tag_name="db", per_page=2, page=1)
    assert [d["name"] for d in first["droplets"]] == ["db-1", "db-2"]
    assert first["meta"] == {"total": 3}
    assert set(first["links"]["pages"]) == {"next", "last"}
    assert "page=2" in first["links"]["pages"]["next"]
    assert "tag_name=db" in first["links"]["pages"]["next"]

    second = lab.client.droplets.list(tag_name="db", per_page=2, page=2)
    assert [d["name"] for d in second["droplets"]] == ["db-3"]
    assert set(second["links"]["pages"]) == {"first", "prev"}
    # following the link from the first page lands on the same page
    with urllib.request.urlopen(
        urllib.request.Request(
            first["links"]["pages"]["next"], headers={"Authorization": f"Bearer {TOKEN}"}
        )
    ) as resp:
        assert [d["id"] for d in json.load(resp)["droplets"]] == [
            d["id"] for d in second["droplets"]
        ]
    assert lab.client.droplets.list(per_page=20)["links"] == {}
    assert lab.client.droplets.list()["meta"]["total"] == 4


def test_droplet_goes_new_then_active_with_addresses_from_the_pools(lab: Lab) -> None:
    lab.cloud.ready.clear()
    droplet = create(lab, name="pg-1")["droplet"]
    assert droplet["status"] == "new"
    time.sleep(0.1)
    assert lab.client.droplets.get(droplet["id"])["droplet"]["status"] == "new"
    lab.cloud.ready.set()
    droplet = active(lab, droplet["id"])

    v4 = {n["type"]: n for n in droplet["networks"]["v4"]}
    assert v4["public"]["ip_address"] in {str(a) for a in PUBLIC_DROPLET_POOL.hosts()}
    assert (v4["public"]["netmask"], v4["public"]["gateway"]) == ("255.255.0.0", "198.18.0.1")
    vpc = lab.client.vpcs.get(droplet["vpc_uuid"])["vpc"]
    assert (vpc["ip_range"], vpc["default"], vpc["region"]) == ("10.116.0.0/20", True, "nyc3")
    assert v4["private"]["ip_address"] == "10.116.0.2"  # .1 is the lab host's
    (created,) = lab.client.droplet_actions.list(droplet["id"])["actions"]
    assert (created["type"], created["status"]) == ("create", "completed")
    (call,) = lab.cloud.named("create_droplet")
    assert call[0]["id"] == droplet["id"] and call[2]["id"] == vpc["id"]


def test_power_actions_reach_the_machine_and_complete(lab: Lab) -> None:
    key = lab.client.ssh_keys.create(body={"name": "ops", "public_key": ED25519})["ssh_key"]
    droplet = create(lab, name="app-1", ssh_keys=[key["fingerprint"]])["droplet"]
    active(lab, droplet["id"])  # the machine is built in the background: wait, then look
    assert lab.cloud.named("create_droplet")[0][1] == [ED25519]

    action = lab.client.droplet_actions.post(droplet["id"], body={"type": "power_off"})["action"]
    assert action["status"] == "in-progress" and action["resource_id"] == droplet["id"]
    done = wait_for(
        lambda: (a := lab.client.actions.get(action["id"])["action"])["status"] == "completed" and a
    )
    assert done["completed_at"] and done["type"] == "power_off"
    assert lab.client.droplets.get(droplet["id"])["droplet"]["status"] == "off"

    reboot = lab.client.droplet_actions.post(droplet["id"], body={"type": "power_on"})["action"]
    wait_for(
        lambda: (
            lab.client.droplet_actions.get(droplet["id"], reboot["id"])["action"]["status"]
            == "completed"
        )
    )
    assert lab.client.droplets.get(droplet["id"])["droplet"]["status"] == "active"
    assert [n for n, _ in lab.cloud.calls if n in ("power_off", "power_on")] == [
        "power_off",
        "power_on",
    ]
    listed = lab.client.droplet_actions.list(droplet["id"])["actions"]
    assert [a["type"] for a in listed] == ["power_on", "power_off", "create"]


def test_failing_machine_call_errors_the_action_and_server_lives_on(lab: Lab) -> None:
    droplet = create(lab, name="app-2")["droplet"]
    active(lab, droplet["id"])
    lab.cloud.failing.add("shutdown")
    action = lab.client.droplet_actions.post(droplet["id"], body={"type": "shutdown"})["action"]
    wait_for(lambda: lab.client.actions.get(action["id"])["action"]["status"] == "errored")
    assert lab.client.droplets.get(droplet["id"])["droplet"]["status"] == "active"
    assert lab.client.account.get()["account"]["status"] == "active"


def test_second_action_while_one_is_pending_is_422(lab: Lab) -> None:
    lab.cloud.ready.clear()
    droplet = create(lab, name="slow")["droplet"]
    status, body = lab.error_of(
        lambda: lab.client.droplet_actions.post(droplet["id"], body={"type": "reboot"})
    )
    assert status == 422 and "pending" in body["message"]
    lab.cloud.ready.set()


def last_firewall_apply(lab: Lab) -> tuple[list[dict], list[dict]]:
    return lab.cloud.named("apply_firewalls")[-1]


def test_firewalls_reach_the_machine_with_targets_resolved(lab: Lab) -> None:
    lab.client.tags.create(body={"name": "db"})
    dbs = create(lab, names=["db-1", "db-2"], tags=["db"])["droplets"]
    web = create(lab, name="web-1")["droplet"]
    firewall = lab.client.firewalls.create(
        body={
            "name": "db-fw",
            "tags": ["db"],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "5432", "sources": {"droplet_ids": [web["id"]]}},
                {"protocol": "tcp", "ports": "22", "sources": {"tags": ["db"]}},
            ],
            "outbound_rules": [
                {"protocol": "tcp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}}
            ],
        }
    )["firewall"]
    assert firewall["status"] == "waiting"
    wait_for(lambda: lab.client.firewalls.get(firewall["id"])["firewall"]["status"] == "succeeded")
    droplets, (applied,) = last_firewall_apply(lab)
    db_ids = sorted(d["id"] for d in dbs)
    assert applied["droplet_ids"] == db_ids
    assert applied["inbound_rules"][1]["sources"]["droplet_ids"] == db_ids
    assert applied["outbound_rules"][0]["ports"] == "0"
    assert {d["id"] for d in droplets} == set(db_ids) | {web["id"]}

    # tagging the web droplet widens the firewall; destroying a db narrows it
    lab.client.tags.assign_resources(
        "db", body={"resources": [{"resource_id": str(web["id"]), "resource_type": "droplet"}]}
    )
    wait_for(lambda: web["id"] in last_firewall_apply(lab)[1][0]["droplet_ids"])
    lab.client.droplets.destroy(dbs[0]["id"])
    wait_for(lambda: dbs[0]["id"] not in last_firewall_apply(lab)[1][0]["droplet_ids"])
    assert lab.cloud.named("destroy_droplet")[0][0]["id"] == dbs[0]["id"]
    assert lab.client.tags.get("db")["tag"]["resources"]["droplets"]["count"] == 2

    lab.client.firewalls.delete_tags(firewall["id"], body={"tags": ["db"]})
    lab.client.firewalls.assign_droplets(firewall["id"], body={"droplet_ids": [dbs[1]["id"]]})
    wait_for(lambda: last_firewall_apply(lab)[1][0]["droplet_ids"] == [dbs[1]["id"]])
    lab.client.firewalls.delete(firewall["id"])
    wait_for(lambda: last_firewall_apply(lab)[1] == [])


def test_firewall_naming_a_missing_tag_is_422(lab: Lab) -> None:
    status, body = lab.error_of(
        lambda: lab.client.firewalls.create(
            body={
                "name": "fw",
                "tags": ["nope"],
                "inbound_rules": [
                    {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["0.0.0.0/0"]}}
                ],
            }
        )
    )
    assert status == 422 and "nope" in body["message"]


def test_load_balancer_reaches_the_machine_and_follows_its_targets(lab: Lab) -> None:
    dbs = create(lab, names=["pg-1", "pg-2"], tags=["pg"])["droplets"]
    lb = lab.client.load_balancers.create(
        body={
            "name": "pg-primary",
            "region": "nyc3",
            "tag": "pg",
            "forwarding_rules": [
                {
                    "entry_protocol": "tcp",
                    "entry_port": 5432,
                    "target_protocol": "tcp",
                    "target_port": 5432,
                }
            ],
            "health_check": {
                "protocol": "http",
                "port": 8008,
                "path": "/primary",
                "check_interval_seconds": 3,
                "healthy_threshold": 2,
            },
        }
    )["load_balancer"]
    assert lb["status"] == "new"
    assert lb["ip"] in {str(a) for a in LOAD_BALANCER_POOL.hosts()}
    assert lb["health_check"]["unhealthy_threshold"] == 5  # DO's default fills the rest
    wait_for(lambda: lab.client.load_balancers.get(lb["id"])["load_balancer"]["status"] == "active")
    applied, targets = lab.cloud.named("apply_load_balancer")[-1]
    assert applied["ip"] == lb["ip"] and applied["health_check"]["path"] == "/primary"
    assert sorted(t["id"] for t in targets) == sorted(d["id"] for d in dbs)

    lab.client.droplets.destroy(dbs[0]["id"])
    wait_for(
        lambda: [t["id"] for t in lab.cloud.named("apply_load_balancer")[-1][1]] == [dbs[1]["id"]]
    )
    assert lab.client.load_balancers.get(lb["id"])["load_balancer"]["droplet_ids"] == [dbs[1]["id"]]
    lab.client.load_balancers.delete(lb["id"])
    wait_for(lambda: lab.cloud.named("remove_load_balancer"))
    assert lab.cloud.named("remove_load_balancer")[0][0]["id"] == lb["id"]


def test_state_survives_a_restart(lab: Lab) -> None:
    droplet = create(lab, name="keep-me", tags=["keep"])["droplet"]
    active(lab, droplet["id"])
    lab.client.ssh_keys.create(body={"name": "ops", "public_key": ED25519})
    custom = lab.client.vpcs.create(
        body={"name": "side", "region": "fra1", "ip_range": "10.200.0.0/24"}
    )
    lab.stop()

    lab.cloud = RecordingCloud()
    lab.start()
    again = lab.client.droplets.get(droplet["id"])["droplet"]
    assert again == {**droplet, "status": "active"}
    assert lab.client.tags.get("keep")["tag"]["resources"]["count"] == 1
    assert lab.client.ssh_keys.list()["meta"]["total"] == 1
    assert lab.client.vpcs.get(custom["vpc"]["id"])["vpc"]["ip_range"] == "10.200.0.0/24"
    newer = create(lab, name="after")["droplet"]
    assert newer["id"] > droplet["id"]
    assert newer["networks"]["v4"][0]["ip_address"] != droplet["networks"]["v4"][0]["ip_address"]


def test_vpc_rules(lab: Lab) -> None:
    status, body = lab.error_of(
        lambda: lab.client.vpcs.create(
            body={"name": "x", "region": "nyc3", "ip_range": "10.116.0.0/24"}
        )
    )
    assert status == 422 and "overlaps" in body["message"]
    vpcs = lab.client.vpcs.list()["vpcs"]
    assert sorted(v["ip_range"] for v in vpcs if v["default"]) == sorted(
        ["10.116.0.0/20", "10.114.0.0/20", "10.110.0.0/20"]
    )
    vpc = lab.client.vpcs.create(body={"name": "blue", "region": "ams3"})["vpc"]
    droplet = create(lab, name="in-blue", region="ams3", vpc_uuid=vpc["id"])["droplet"]
    members = lab.client.vpcs.list_members(vpc["id"])["members"]
    assert members[0]["urn"] == f"do:droplet:{droplet['id']}"
    status, _ = lab.error_of(lambda: lab.client.vpcs.delete(vpc["id"]))
    assert status == 403
    lab.client.droplets.destroy(droplet["id"])
    lab.client.vpcs.delete(vpc["id"])
    assert lab.error_of(lambda: lab.client.vpcs.get(vpc["id"]))[0] == 404
    # Its bridge goes with it: the range may be reused at once.
    assert [args[0]["id"] for args in lab.cloud.named("remove_vpc")] == [vpc["id"]]


ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdmI5ZC1d3tEtD3NjbQ0V6eVtbqdvtU7x/oX5Z6ZXkA ops@lab"
