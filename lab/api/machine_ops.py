"""Everything that reaches the machine layer (`Cloud`): run in the background, never under
the state lock, and every failure logged and recorded (action `errored`, firewall `failed`,
load balancer `errored`) instead of crashing the server."""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

from lab.api.runner import KeyedRunner
from lab.api.store import Store, now
from lab.api.views import lb_targets, lb_view, resolved_firewall
from lab.cloud import Cloud

log = logging.getLogger(__name__)

FIREWALLS_KEY = "firewalls"
# Power actions that end with the droplet booted, so they complete when sshd answers.
BOOTING = {"create", "power_on", "reboot", "power_cycle"}


def droplet_key(droplet_id: int) -> str:
    return f"droplet:{droplet_id}"


def lb_key(lb_id: str) -> str:
    return f"lb:{lb_id}"


class MachineOps:
    def __init__(
        self,
        store: Store,
        cloud: Cloud,
        *,
        poll_interval: float = 0.5,
        ready_timeout: float = 600.0,
    ) -> None:
        self.store = store
        self.cloud = cloud
        self.runner = KeyedRunner()
        self.poll_interval = poll_interval
        self.ready_timeout = ready_timeout
        self._waiting: dict[int, tuple[int, float]] = {}  # droplet id -> (action id, deadline)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Pick up where a previous run of the server left off, then start polling."""
        with self.store.change() as s:
            for action in s.actions.values():
                if action["status"] != "in-progress":
                    continue
                droplet = s.droplets.get(str(action["resource_id"]))
                if action["type"] == "create" and droplet is not None:
                    self._wait_ready(droplet["id"], action["id"])
                else:  # the server died in the middle of it: its outcome is unknown
                    self._finish(action, ok=False)
            leftovers = list(s.destroying_droplets.values())
            lb_leftovers = list(s.destroying_load_balancers.values())
            lb_ids = list(s.load_balancers)
        for droplet in leftovers:
            self.runner.submit(droplet_key(droplet["id"]), lambda d=droplet: self._destroy(d))
        for lb in lb_leftovers:
            self.runner.submit(lb_key(lb["id"]), lambda lb=lb: self._remove_lb(lb))
        self.apply_firewalls()
        for lb_id in lb_ids:
            self.apply_load_balancer(lb_id)
        self._poller = threading.Thread(target=self._poll, name="lab-api-ready", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self.runner.shutdown()

    # -- actions ----------------------------------------------------------------------

    def new_action(self, droplet: dict[str, Any], kind: str) -> dict[str, Any]:
        """Record an in-progress action on a droplet (caller holds the store lock)."""
        action = {
            "id": self.store.next_id("action"),
            "status": "in-progress",
            "type": kind,
            "started_at": now(),
            "completed_at": None,
            "resource_id": droplet["id"],
            "resource_type": "droplet",
            "region": copy.deepcopy(droplet["region"]),
            "region_slug": droplet["region"]["slug"],
        }
        self.store.actions[str(action["id"])] = action
        return action

    def _finish(self, action: dict[str, Any], ok: bool) -> None:
        action["status"] = "completed" if ok else "errored"
        action["completed_at"] = now()

    def _finish_id(self, action_id: int, ok: bool, droplet_status: str | None = None) -> None:
        with self.store.change() as s:
            action = s.actions.get(str(action_id))
            if action is not None and action["status"] == "in-progress":
                self._finish(action, ok)
            droplet = s.droplets.get(str(action["resource_id"])) if action else None
            if ok and droplet_status and droplet is not None:
                droplet["status"] = droplet_status

    def _wait_ready(self, droplet_id: int, action_id: int) -> None:
        self._waiting[droplet_id] = (action_id, time.monotonic() + self.ready_timeout)

    def _snapshot(self, droplet_id: int) -> dict[str, Any] | None:
        with self.store.lock:
            droplet = self.store.droplets.get(str(droplet_id))
            return copy.deepcopy(droplet) if droplet is not None else None

    # -- droplets ---------------------------------------------------------------------

    def build_droplet(
        self, droplet_id: int, action_id: int, public_keys: list[str], user_data: str | None
    ) -> None:
        self.runner.submit(
            droplet_key(droplet_id),
            lambda: self._build(droplet_id, action_id, public_keys, user_data),
        )

    def _build(
        self, droplet_id: int, action_id: int, public_keys: list[str], user_data: str | None
    ) -> None:
        with self.store.lock:
            droplet = copy.deepcopy(self.store.droplets.get(str(droplet_id)))
            vpc = copy.deepcopy(self.store.vpcs.get(str(droplet and droplet["vpc_uuid"])))
        if droplet is None or vpc is None:  # destroyed before it was built
            return
        if user_data is not None:
            droplet["user_data"] = user_data
        try:
            self.cloud.create_droplet(droplet, public_keys, vpc)
        except Exception:
            log.exception("create_droplet failed for droplet %s", droplet_id)
            self._finish_id(action_id, ok=False)
            return
        with self.store.lock:
            if str(droplet_id) in self.store.droplets:
                self._wait_ready(droplet_id, action_id)
        # Its addresses exist now: enforce firewalls and load balancers that select it.
        self.apply_firewalls()
        self.apply_load_balancers_for([droplet_id])

    def power(self, droplet_id: int, action_id: int, kind: str) -> None:
        self.runner.submit(
            droplet_key(droplet_id), lambda: self._power(droplet_id, action_id, kind)
        )

    def _power(self, droplet_id: int, action_id: int, kind: str) -> None:
        steps = {
            "power_off": ["power_off"],
            "shutdown": ["shutdown"],
            "power_on": ["power_on"],
            "reboot": ["shutdown", "power_on"],
            "power_cycle": ["power_off", "power_on"],
        }[kind]
        for step in steps:
            droplet = self._snapshot(droplet_id)
            if droplet is None:
                return
            try:
                getattr(self.cloud, step)(droplet)
            except Exception:
                log.exception("%s failed for droplet %s", step, droplet_id)
                self._finish_id(action_id, ok=False)
                return
            if step != "power_on":
                with self.store.change() as s:
                    if (d := s.droplets.get(str(droplet_id))) is not None:
                        d["status"] = "off"
        if kind in BOOTING:
            with self.store.lock:
                self._wait_ready(droplet_id, action_id)
        else:
            self._finish_id(action_id, ok=True)

    def forget(self, droplet_id: int) -> None:
        """Stop waiting for a droplet that is being destroyed (caller holds the lock)."""
        self._waiting.pop(droplet_id, None)

    def destroy_droplet(self, droplet: dict[str, Any], lb_ids: list[str]) -> None:
        """`droplet` is already out of `droplets` and parked in `destroying_droplets`."""

        def job() -> None:
            self._destroy(droplet)
            for lb_id in lb_ids:
                self.apply_load_balancer(lb_id)

        self.runner.submit(droplet_key(droplet["id"]), job)

    def _destroy(self, droplet: dict[str, Any]) -> None:
        try:
            self.cloud.destroy_droplet(copy.deepcopy(droplet))
        except Exception:  # addresses stay reserved; retried when the server restarts
            log.exception("destroy_droplet failed for droplet %s", droplet["id"])
            return
        with self.store.change() as s:
            s.destroying_droplets.pop(str(droplet["id"]), None)
        self.apply_firewalls()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            with self.store.lock:
                waiting = dict(self._waiting)
            for droplet_id, (action_id, deadline) in waiting.items():
                self._check_ready(droplet_id, action_id, deadline)

    def _check_ready(self, droplet_id: int, action_id: int, deadline: float) -> None:
        droplet = self._snapshot(droplet_id)
        ready = False
        if droplet is not None:
            try:
                ready = self.cloud.droplet_ready(droplet)
            except Exception:
                log.exception("droplet_ready failed for droplet %s", droplet_id)
        timed_out = not ready and time.monotonic() > deadline
        if droplet is not None and not ready and not timed_out:
            return
        with self.store.lock:
            if self._waiting.get(droplet_id, (None,))[0] != action_id:
                return  # superseded (destroyed, or another action took over)
            del self._waiting[droplet_id]
        if timed_out:
            log.error("droplet %s did not answer within %.0f s", droplet_id, self.ready_timeout)
        self._finish_id(action_id, ok=ready, droplet_status="active")

    # -- firewalls and load balancers -------------------------------------------------

    def apply_firewalls(self) -> None:
        """Queue a full re-apply; firewalls show `waiting` until it has run."""
        with self.store.change() as s:
            for firewall in s.firewalls.values():
                firewall["status"] = "waiting"
        self.runner.submit(FIREWALLS_KEY, self._apply_firewalls, coalesce="apply")

    def _apply_firewalls(self) -> None:
        with self.store.lock:
            droplets = copy.deepcopy(list(self.store.droplets.values()))
            firewalls = [resolved_firewall(self.store, f) for f in self.store.firewalls.values()]
        try:
            self.cloud.apply_firewalls(droplets, firewalls)
            status = "succeeded"
        except Exception:
            log.exception("apply_firewalls failed")
            status = "failed"
        with self.store.change() as s:
            for firewall in firewalls:
                if (record := s.firewalls.get(firewall["id"])) is not None:
                    record["status"] = status

    def apply_load_balancer(self, lb_id: str) -> None:
        self.runner.submit(lb_key(lb_id), lambda: self._apply_lb(lb_id), coalesce="apply")

    def apply_load_balancers_for(
        self, droplet_ids: list[int], tags: list[str] | None = None
    ) -> None:
        """Re-apply every load balancer that selects one of these droplets or tags."""
        wanted_ids, wanted_tags = set(droplet_ids), set(tags or [])
        with self.store.lock:
            for d in droplet_ids:
                if (droplet := self.store.droplets.get(str(d))) is not None:
                    wanted_tags |= set(droplet["tags"])
            lb_ids = [
                lb["id"]
                for lb in self.store.load_balancers.values()
                if wanted_ids & set(lb.get("droplet_ids") or []) or lb.get("tag") in wanted_tags
            ]
        for lb_id in lb_ids:
            self.apply_load_balancer(lb_id)

    def _apply_lb(self, lb_id: str) -> None:
        with self.store.lock:
            lb = self.store.load_balancers.get(lb_id)
            if lb is None:
                return
            view = lb_view(self.store, lb)
            targets = copy.deepcopy(lb_targets(self.store, lb))
        try:
            self.cloud.apply_load_balancer(view, targets)
            status = "active"
        except Exception:
            log.exception("apply_load_balancer failed for %s", lb_id)
            status = "errored"
        with self.store.change() as s:
            if (record := s.load_balancers.get(lb_id)) is not None:
                record["status"] = status

    def remove_vpc(self, vpc: dict[str, Any]) -> None:
        """Its bridge goes now: a new VPC may reuse the range at once."""
        self.cloud.remove_vpc(copy.deepcopy(vpc))

    def remove_load_balancer(self, lb: dict[str, Any]) -> None:
        """`lb` is already out of `load_balancers` and parked in `destroying_load_balancers`."""
        self.runner.submit(lb_key(lb["id"]), lambda: self._remove_lb(lb))

    def _remove_lb(self, lb: dict[str, Any]) -> None:
        try:
            self.cloud.remove_load_balancer(copy.deepcopy(lb))
        except Exception:
            log.exception("remove_load_balancer failed for %s", lb["id"])
            return
        with self.store.change() as s:
            s.destroying_load_balancers.pop(lb["id"], None)
