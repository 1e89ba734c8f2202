"""A clustered broker: a node dies under its gateways, they move to another node, nothing is lost (issue 17).

A real RabbitMQ 3.10 cluster of three nodes on loopback (hil/rabbitmq.py; MQTT 3.1.1 is all its plugin speaks),
with quorum queues for persistent sessions. Gateways are the agent's own uplink (hil/fleet_sim.py: outbox,
publisher, MQTT client with the cluster's URL list); the head-end consumer keeps a persistent session on another
node. Plaintext on loopback (hil/rabbitmq.py says why; the clients set allow_plaintext). The cluster starts once
for the module: Erlang start-up takes most of a minute on a loaded machine.
"""
import asyncio

import pytest

from gridedge.hil.fleet_sim import Fleet, HeadEnd
from gridedge.hil.rabbitmq import RabbitCluster, find_rabbitmq

from .aio import arun

pytestmark = pytest.mark.skipif(find_rabbitmq() is not None, reason=str(find_rabbitmq()))

GATEWAYS = 5


@pytest.fixture(scope="module")
def cluster():
    with RabbitCluster(3) as c:
        yield c


@pytest.mark.timeout(330)  # the cluster start-up (~75 s on a loaded machine) is charged to this first test, and
# a loaded cluster can take a minute to take the gateways back (leader elections; their back-off doubles meanwhile)
def test_a_node_dies_mid_stream_and_every_seq_arrives_once(tmp_path, cluster):
    """Gateways and the head-end are on node 0; node 0 is SIGKILLed; the gateways reconnect to another node (the
    next in their list that takes them) and replay what was not acknowledged, the head-end resumes its session (a quorum queue, replicated)
    on node 2, and sees every seq of every gateway exactly once."""
    async def scenario():
        urls = cluster.urls
        head = HeadEnd([urls[0], urls[2]], None, "headend-dso", protocol="3.1.1")  # its quorum queue: on node 0
        await head.start()
        fleet = Fleet(tmp_path / "fleet", urls, None, GATEWAYS, beat_s=0.1, protocol="3.1.1", id_prefix="gw-rmq-",
                      backfill_rate=100.0, backfill_jitter_s=0.5)
        try:
            await fleet.start(60)
            assert {gw.mqtt.endpoint.port for gw in fleet.gateways} == {cluster.nodes[0].mqtt_port}
            await fleet.wait(lambda: all(head.seen(g) >= 20 for g in fleet.ids), 30, "a stream from every gateway")
            await asyncio.to_thread(cluster.kill, 0)
            await fleet.wait(lambda: head.mqtt.connected.is_set() and head.mqtt.endpoint.port == cluster.nodes[2].mqtt_port,
                             60, "the head-end on node 2")
            # node 1 or 2: an attempt on node 1 can fail while the cluster elects new leaders (client-id tracking),
            # and the next attempt goes to the next node of the list
            dead = cluster.nodes[0].mqtt_port
            await fleet.wait(lambda: fleet.connected() == GATEWAYS and
                             all(gw.mqtt.endpoint.port != dead for gw in fleet.gateways), 120, "every gateway moved")
            seen = {g: head.seen(g) for g in fleet.ids}
            await fleet.wait(lambda: all(head.seen(g) >= seen[g] + 20 for g in fleet.ids), 30, "streams go on")
            fleet.beating = False
            await fleet.wait(lambda: fleet.pending() == 0, 60, "every outbox drained")
            last = {gw.gateway_id: gw.outbox.stats()["next_seq"]["telemetry"] - 1 for gw in fleet.gateways}
            await fleet.wait(lambda: all(head.seen(g) >= s for g, s in last.items()), 60, "the head-end saw all")
            for g, issued in last.items():
                rep = head.audit.report(g, "telemetry")
                assert (rep.first, rep.last, rep.missing, rep.reused) == (0, issued, [], []), (g, rep)
        finally:
            await fleet.stop()
            await head.stop()

    arun(scenario(), 230)
