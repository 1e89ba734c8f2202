"""A RabbitMQ cluster on loopback for the rig: 2-3 nodes with the MQTT plugin (issue 17).

Why RabbitMQ: utilities run clustered brokers, and RabbitMQ's (Debian's `rabbitmq-server`, 3.10 on Debian 12) is
one that speaks only MQTT 3.1.1 before 3.13. What a cluster node needs on one machine: its own node name
(RABBITMQ_NODENAME), MQTT and distribution ports, mnesia and log directories owned by the `rabbitmq` user (the
server script switches to it, so the run directory lives outside pytest's root-only temporary tree), and the
Erlang cookie all of them share (the `rabbitmq` user's ~/.erlang.cookie, /var/lib/rabbitmq).

Know the engine (docs/fleet.md, "Clustered brokers"): with 3.10, QoS 1 messages for a subscriber survive the death
of the node holding its queue only with a persistent session (clean session off) and
`mqtt.durable_queue_type = quorum`, which this cluster sets (the default is a classic queue on one node); with a
clean session the messages routed while the subscriber is away are lost. Client-id tracking is replicated (Raft),
so a client connects only while a majority of nodes runs: three nodes survive the death of one.

Plaintext MQTT on loopback, anonymous (the guest user): RabbitMQ's certificate login needs a broker user per CN,
which is deployment work (docs/fleet.md), not what the cluster tests are about; the clients set allow_plaintext.
The first node starts alone and the others join it (classic peer discovery), so two nodes never race to found
two clusters. Every node is killed at exit if stop() did not run (atexit), like hil/broker.py's mosquitto.
"""
from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from .broker import accepts, free_port

__all__ = ["RabbitCluster", "RabbitNotFound", "find_rabbitmq"]

_SERVER = "/usr/sbin/rabbitmq-server"
_CTL = "/usr/sbin/rabbitmqctl"
INSTALL_HINT = "rabbitmq-server not found: install it with `sudo apt-get install rabbitmq-server` (Debian 12: 3.10)"

_LIVE: weakref.WeakSet[RabbitCluster] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_LIVE):
        cluster.stop(timeout=0)


class RabbitNotFound(RuntimeError):
    pass


def find_rabbitmq() -> str | None:
    """Why a cluster cannot run here (not installed, not root, no rabbitmq user), or None."""
    if not (os.path.exists(_SERVER) and os.path.exists(_CTL)):
        return INSTALL_HINT
    if os.geteuid() != 0:
        return "the RabbitMQ server script switches to the rabbitmq user: run as root"
    try:
        pwd.getpwnam("rabbitmq")
    except KeyError:
        return "no rabbitmq user (the Debian package creates it)"
    return None


class Node:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name  # the Erlang node name, name@localhost
        self.dir = root / name.split("@")[0]
        self.mqtt_port, self.dist_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def pid_file(self) -> Path:
        return self.dir / "node.pid"

    def env(self, config: Path) -> dict[str, str]:
        return dict(os.environ, RABBITMQ_NODENAME=self.name, RABBITMQ_DIST_PORT=str(self.dist_port),
                    RABBITMQ_NODE_PORT=str(free_port()), RABBITMQ_CONFIG_FILE=str(config),
                    RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
                    RABBITMQ_PID_FILE=str(self.pid_file), RABBITMQ_ENABLED_PLUGINS="rabbitmq_mqtt",
                    RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                    RABBITMQ_PLUGINS_EXPAND_DIR=str(self.dir / "plugins-expand"), RABBITMQ_LOGS="-")

    def pid(self) -> int | None:
        """The Erlang VM's pid (the server script's child, as the rabbitmq user)."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


class RabbitCluster:
    """n RabbitMQ nodes clustered on loopback; `urls` are their MQTT listeners, in node order."""

    def __init__(self, n: int = 3, *, quorum: bool = True, prefetch: int = 10) -> None:
        if find_rabbitmq():
            raise RabbitNotFound(find_rabbitmq())
        self.root = Path(tempfile.mkdtemp(prefix="gridedge-rabbitmq-"))  # /tmp: reachable by the rabbitmq user
        tag = self.root.name.rsplit("-", 1)[-1].lower()
        self.nodes = [Node(self.root, f"gridedge-{tag}-{i}@localhost") for i in range(n)]
        self.quorum, self.prefetch = quorum, prefetch
        self._epmd_was_running = _epmd_running()  # the Erlang port mapper the first node starts, if none runs

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _config(self, node: Node) -> Path:
        peers = "".join(f"cluster_formation.classic_config.nodes.{i} = {p.name}\n"
                        for i, p in enumerate(self.nodes, 1))
        text = (f"listeners.tcp = none\nloopback_users = none\nmqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}\n"
                f"mqtt.allow_anonymous = true\nmqtt.prefetch = {self.prefetch}\n"
                + ("mqtt.durable_queue_type = quorum\n" if self.quorum else "")
                + "cluster_formation.peer_discovery_backend = classic_config\n" + peers
                + "log.console = true\nlog.console.level = info\nlog.file = false\n")
        path = node.dir / "rabbitmq.conf"
        path.write_text(text)
        return path

    def start(self, timeout: float = 120.0) -> None:
        """Start node 0, then the others; return when every node serves MQTT and the cluster has them all."""
        _LIVE.add(self)
        user = pwd.getpwnam("rabbitmq")
        os.chown(self.root, user.pw_uid, user.pw_gid)
        for node in self.nodes:
            node.dir.mkdir()
            config = self._config(node)
            for path in (node.dir, config):
                os.chown(path, user.pw_uid, user.pw_gid)
        deadline = time.monotonic() + timeout
        self._launch(self.nodes[0], deadline)
        for node in self.nodes[1:]:
            self._launch(node, deadline, wait=False)
        for node in self.nodes[1:]:
            self._wait(node, deadline)
        self.ctl(self.nodes[0], "await_online_nodes", str(len(self.nodes)), "--timeout",
                 str(max(1, int(deadline - time.monotonic()))) + "000")

    def _launch(self, node: Node, deadline: float, wait: bool = True) -> None:
        log = open(node.dir / "console.log", "ab")
        node.proc = subprocess.Popen([_SERVER], env=node.env(node.dir / "rabbitmq.conf"), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self._wait(node, deadline)

    def _wait(self, node: Node, deadline: float) -> None:
        while not accepts("127.0.0.1", node.mqtt_port):
            if node.proc.poll() is not None or time.monotonic() > deadline:
                tail = (node.dir / "console.log").read_text(errors="replace")[-3000:]
                self.stop(timeout=0)
                raise RuntimeError(f"RabbitMQ node {node.name} did not start:\n{tail}")
            time.sleep(0.3)

    def ctl(self, node: Node, *args: str) -> str:
        """rabbitmqctl against node (it finds the shared cookie as the rabbitmq user)."""
        out = subprocess.run([_CTL, "-n", node.name, *args], capture_output=True, text=True, timeout=120,
                             cwd="/")
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: {out.stdout}{out.stderr}")
        return out.stdout

    def kill(self, i: int) -> None:
        """SIGKILL node i's Erlang VM: a node crash, no goodbye to its peers or clients."""
        node = self.nodes[i]
        pid = node.pid()
        if pid:
            _signal(pid, signal.SIGKILL)
        if node.proc:
            _signal(-node.proc.pid, signal.SIGKILL)
            node.proc.wait(10)
            node.proc = None
        while pid and _alive(pid):
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node (a clean shutdown), SIGKILL what is left after timeout; remove the run directory."""
        pids = [node.pid() for node in self.nodes]  # read first: a node removes its pid file as it shuts down
        for pid in pids:
            if pid:
                _signal(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for node, pid in zip(self.nodes, pids):
            while pid and _alive(pid) and time.monotonic() < end:
                time.sleep(0.2)
            if pid:
                _signal(pid, signal.SIGKILL)
            if node.proc:
                _signal(-node.proc.pid, signal.SIGKILL)  # its process group: the server script and su
                node.proc.wait(10)
                node.proc = None
        _LIVE.discard(self)
        shutil.rmtree(self.root, ignore_errors=True)
        if not self._epmd_was_running and shutil.which("epmd"):  # ours: leave nothing running
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=10)

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _epmd_running() -> bool:
    return accepts("127.0.0.1", 4369)


def _signal(pid: int, sig: int) -> None:
    """os.kill, or os.killpg for a negative pid; a process already gone is fine."""
    try:
        os.killpg(-pid, sig) if pid < 0 else os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Running (a zombie is not: its parent, the server script, may be gone and nobody reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
