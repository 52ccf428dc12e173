"""Background work for slow machine calls: in order per key, in parallel across keys."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Job = Callable[[], None]


class KeyedRunner:
    """Jobs with the same key (one droplet, one load balancer, "firewalls") run one after
    another in submission order, so a power_on never overtakes the power_off before it."""

    def __init__(self, workers: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lab-api")
        self._lock = threading.Lock()
        self._queues: dict[str, deque[tuple[Job, str | None]]] = {}

    def submit(self, key: str, job: Job, coalesce: str | None = None) -> None:
        """Queue `job`. With `coalesce`, skip it when a job with the same tag is already
        waiting (not running) on this key: such jobs re-read state when they run."""
        with self._lock:
            queue = self._queues.get(key)
            if queue is not None:
                # queue[0] may already be running: only a later twin can absorb this job
                waiting = list(queue)[1:]
                if coalesce is not None and any(tag == coalesce for _, tag in waiting):
                    return
                queue.append((job, coalesce))
                return
            self._queues[key] = deque([(job, coalesce)])
        self._pool.submit(self._drain, key)

    def _drain(self, key: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                job, _ = queue[0]
            try:
                job()
            except Exception:  # a job must never take the worker down with it
                log.exception("background job on %s failed", key)
            with self._lock:
                queue.popleft()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
