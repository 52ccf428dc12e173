"""Benchmark of the local cloud (not a test): prints figures, asserts nothing.

    uv run python -m bench.lab [--skip-cold]

- golden image build time, cold (into a scratch directory) and warm (the cache hit);
- time from one API call creating six droplets until all six answer SSH;
- memory of nine droplets with their Debian services running (PostgreSQL, etcd, HAProxy,
  nginx, php-fpm, sshd), as the sum of their processes' PSS and as the drop in the host's
  MemAvailable.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pydo

from lab import image, lifecycle, network
from tasks import digitalocean

TAG = "bench-lab"


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _public(d: dict) -> str:
    return next(n["ip_address"] for n in d["networks"]["v4"] if n["type"] == "public")


def bench_image(skip_cold: bool) -> None:
    if not skip_cold:
        scratch = Path(tempfile.mkdtemp(prefix="lifeboat-image-bench-", dir="/var/tmp"))
        try:
            t0 = time.monotonic()
            image.ensure_image(scratch)
            print(f"image build, cold:            {time.monotonic() - t0:7.1f} s")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.monotonic()
    image.ensure_image()
    print(f"image build, warm (cached):   {time.monotonic() - t0:7.3f} s")


def _create(do: pydo.Client, names: list[str], key_id: int) -> list[dict]:
    body = {
        "names": names,
        "region": "nyc3",
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "ssh_keys": [key_id],
        "tags": [TAG],
    }
    return do.droplets.create(body=body)["droplets"]


def bench_droplets(do: pydo.Client, key_id: int) -> None:
    do.droplets.destroy_by_tag(tag_name=TAG)
    t0 = time.monotonic()
    created = _create(do, [f"bench-{i}" for i in range(6)], key_id)
    ips = [_public(d) for d in created]
    pending = set(ips)
    while pending:
        pending = {ip for ip in pending if not network.sshd_answers(ip)}
        time.sleep(0.05)
    print(f"six droplets, API call to SSH: {time.monotonic() - t0:7.1f} s")

    created += _create(do, [f"bench-{i}" for i in range(6, 9)], key_id)
    for d in created:
        while not network.sshd_answers(_public(d)):
            time.sleep(0.1)
    time.sleep(20)  # let every droplet's services finish starting and settle
    pids = [p for d in created for p in network.netns_pids(d["id"])]
    pss = _pss_kib(pids)
    before = _mem_available_kib()
    do.droplets.destroy_by_tag(tag_name=TAG)
    deadline = time.monotonic() + 60
    while any(network.netns_pids(d["id"]) for d in created) and time.monotonic() < deadline:
        time.sleep(0.5)
    after = _mem_available_kib()
    print(
        f"nine droplets, PSS of all their processes: {pss / 1024:7.0f} MiB ({len(pids)} processes)"
    )
    print(f"nine droplets, host MemAvailable freed on destroy: {(after - before) / 1024:7.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold image build")
    args = parser.parse_args()
    bench_image(args.skip_cold)
    info = lifecycle.up()
    do = digitalocean.client(info["api_token"], info["api_url"])
    keys = do.ssh_keys.list(per_page=200)["ssh_keys"]
    key = next((k for k in keys if k["public_key"] == info["ssh_public_key"]), None)
    if key is None:
        key = do.ssh_keys.create(body={"name": "bench", "public_key": info["ssh_public_key"]})[
            "ssh_key"
        ]
    bench_droplets(do, key["id"])


if __name__ == "__main__":
    main()
