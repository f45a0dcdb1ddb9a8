"""Where each piece of cluster state lives in Redis: every key name, in one place.

All keys share a prefix (default ``sx``). A part in braces is a hash tag, so
the keys of one domain, one node or one party line share a Redis Cluster
slot; the scripts that touch several keys keep to one slot where they can
(``claim``, ``release``, ``wake``, ``bucket``). The sweep and the roster derive
keys inside the script and so need a single primary (with replicas), which is
the supported deployment.

=========================  ======  ===============================================
key                        type    content
=========================  ======  ===============================================
``sx:epoch``               STRING  ``INCR`` at node start: the node's fencing epoch
``sx:node:{N}``            HASH    node N's lease (``PX`` = node TTL): epoch, pid, ...
``sx:nodes``               ZSET    node -> last lease renewal (ms); removed by the sweep
``sx:a:{D}:L``             HASH    the claim of ``L@D``: node, nepoch, sid, reg, epoch
``sx:seq:{D}``             STRING  claim epochs of domain D (``INCR`` per claim)
``sx:d:{D}``               SET     local parts claimed in domain D
``sx:na:{N}``              SET     address keys claimed by node N (the sweep's work list)
``sx:dir``                 STREAM  directory log: op=reg/unreg, key, node
``sx:sentinel``            STRING  written once; missing after a restart = data lost
``sx:janitor``             STRING  janitor lock (``NX PX``): one sweeper at a time
``sx:nq:{N}``              STREAM  node N's inbox of link messages
``sx:p:{N}``               HASH    node N's presence: m:<key> entry, s:<key> status, g, n
``sx:pc:{N}``              STREAM  node N's presence changes (id 1-n: change n)
``sx:sleep:{D}:L``         STRING  wake profile (JSON) of the address ``L@D``
``sx:sleepers``            SET     addresses with a wake profile
``sx:wake:{D}:L``          STRING  wake lock (``NX PX``): one wake cluster-wide
``sx:pl:{R}`` (+ o, s, n)  HASH..  party line R: member -> node, order, counts per node
``sx:pl:{R}:i`` (+ name)   HASH..  party line R: member -> "node epoch address"; its name
``sx:plseq``               STRING  numbers every cluster JOIN and LEAVE of every line
``sx:pln:{N}``             SET     "R\\nmember" entries held by node N
``sx:rl:{K}``              HASH    token bucket K: tokens, ts
``sx:cdr``                 STREAM  call records
``sx:routes``              HASH    node -> its trunks' route patterns (newline-separated)
=========================  ======  ===============================================
"""

from __future__ import annotations

__all__ = ["Keys", "split_address"]


def split_address(address: str) -> tuple[str, str]:
    """``(local, domain)`` of ``local@domain``; an address without ``@`` is all local part."""
    local, _, domain = address.rpartition("@")
    if not local and not _:
        return address, ""
    return local, domain


class Keys:
    """Key names under ``prefix``."""

    __slots__ = ("cdr", "dir", "epoch", "janitor", "nodes", "prefix", "sentinel", "sleepers")

    def __init__(self, prefix: str = "sx") -> None:
        if not prefix or any(c in prefix for c in "{}\n "):
            raise ValueError(f"a key prefix must be non-empty, without braces or spaces, got {prefix!r}")
        self.prefix = prefix
        self.epoch = f"{prefix}:epoch"
        self.nodes = f"{prefix}:nodes"
        self.dir = f"{prefix}:dir"
        self.sentinel = f"{prefix}:sentinel"
        self.janitor = f"{prefix}:janitor"
        self.sleepers = f"{prefix}:sleepers"
        self.cdr = f"{prefix}:cdr"

    def node(self, node: str) -> str:
        return f"{self.prefix}:node:{{{node}}}"

    def node_addresses(self, node: str) -> str:
        return f"{self.prefix}:na:{{{node}}}"

    def address(self, key: str) -> str:
        local, domain = split_address(key)
        return f"{self.prefix}:a:{{{domain}}}:{local}"

    def domain(self, domain: str) -> str:
        return f"{self.prefix}:d:{{{domain}}}"

    def claim_seq(self, domain: str) -> str:
        return f"{self.prefix}:seq:{{{domain}}}"

    def inbox(self, node: str) -> str:
        return f"{self.prefix}:nq:{{{node}}}"

    def presence(self, node: str) -> str:
        return f"{self.prefix}:p:{{{node}}}"

    def presence_changes(self, node: str) -> str:
        return f"{self.prefix}:pc:{{{node}}}"

    def sleeper(self, address: str) -> str:
        local, domain = split_address(address)
        return f"{self.prefix}:sleep:{{{domain}}}:{local}"

    def wake_lock(self, address: str) -> str:
        local, domain = split_address(address)
        return f"{self.prefix}:wake:{{{domain}}}:{local}"

    def bucket(self, name: str) -> str:
        return f"{self.prefix}:rl:{{{name}}}"
