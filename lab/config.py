"""Fixed facts of the local cloud: where it keeps things and how its networks are laid out.

Every address here lives on bridges and network namespaces the lab creates itself; the
host does not forward lab traffic anywhere else (ip_forward stays as it is, and the lab's
nftables table drops anything routed off the lab bridges).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

STATE_DIR = Path("/var/lib/lifeboat-lab")  # forgotten by `lab down`
CACHE_DIR = Path("/var/cache/lifeboat-lab")  # golden images and the lab CA; kept across `lab down`
RUN_DIR = STATE_DIR / "run"  # pid files, sockets, logs of lab servers
DROPLETS_DIR = STATE_DIR / "droplets"  # one overlay (upper, work, merged) per droplet
STATE_FILE = STATE_DIR / "state.json"  # the API stand-in's state
LAB_FILE = STATE_DIR / "lab.json"  # what `lab status --json` prints besides the droplets

# Public network: one bridge for every droplet's public address and every load balancer.
PUBLIC_BRIDGE = "lbpub0"
PUBLIC_NET = ipaddress.ip_network("198.18.0.0/16")  # RFC 2544 range, never routed off the host
GATEWAY = ipaddress.ip_address("198.18.0.1")  # the host: API stand-in, Spaces
PUBLIC_DROPLET_POOL = ipaddress.ip_network("198.18.16.0/20")
LOAD_BALANCER_POOL = ipaddress.ip_network("198.18.8.0/24")

API_PORT = 8088
SPACES_PORT = 443  # TLS terminator in front of moto
MOTO_PORT = 5900  # moto listens on loopback only
RELEASES_PORT = 8443  # release archives (lab/releases.py), HTTPS
NOTIFY_PORT = 8099  # notification receiver (lab/notifications.py), plain HTTP

# Private (VPC) networks: one bridge per VPC, named from its id; the host holds the first
# address of the range (it is not a droplet's default route).
VPC_BRIDGE_PREFIX = "lbv"
DEFAULT_VPC_RANGES = {  # one default VPC per region, as on DigitalOcean
    "nyc3": "10.116.0.0/20",
    "fra1": "10.114.0.0/20",
    "ams3": "10.110.0.0/20",
}

# `inet` tables: a packet dropped by either is gone, so each is replaced on its own.
NFT_FIREWALL_TABLE = "lifeboat_lab_fw"
NFT_FAULTS_TABLE = "lifeboat_lab_faults"
NETNS_PREFIX = "lbd-"  # network namespace of a droplet: lbd-<droplet id>
LAB_PROCESS_TAG = "lifeboat-lab"  # argv marker of every lab server process, for clean-up
