"""A --cluster.join address that never answers (issue "Observability", first run, item
4): the node still reports ready alone, but after cluster.peer-timeout it warns once
("peer ADDR unreachable after N s: why"), lists the address in /status/cluster/nodes as
unreachable, and counts it in piko_cluster_peer_unreachable_total; when a node appears
there, its first answer is said at info and it is listed active under its id. Both kinds
of silence: nothing listening (refused), and a port that accepts and never answers."""

import re
import socket
import time

from cluster import PEER_TIMEOUT, Cluster
from helpers import SLOW
from prom import scrape


def warn_lines(node, addr):
    return re.findall(r"warn\s+cluster\s+peer %s unreachable after [\d.]+s: .*" %
                      re.escape(addr), node.log_text())


def check_unreachable(cl, addr):
    """Node 1 warned once about addr, lists it unreachable by address, counts it."""
    node = cl.nodes[0]
    node.wait_log(lambda t: warn_lines(node, addr), timeout=3 * PEER_TIMEOUT + 2,
                  message="warning about %s" % addr)
    assert node.ready_status() == 200, "a node alone must still be ready"
    listed = cl.view(0)
    assert addr in listed, "the silent address must be listed: %r" % listed
    assert listed[addr]["status"] == "unreachable" and listed[addr]["address"] == addr, (
        listed[addr])
    assert listed[addr]["local"] is False
    m = scrape(node)
    assert m.value("piko_cluster_peer_unreachable_total") == 1
    assert m.value("piko_cluster_nodes", status="unreachable") == 1
    assert m.value("piko_cluster_nodes", status="active") == 1  # itself
    time.sleep(3 * PEER_TIMEOUT)  # retries go on: the warning is not repeated
    assert len(warn_lines(node, addr)) == 1, warn_lines(node, addr)
    assert scrape(node).value("piko_cluster_peer_unreachable_total") == 1


def check_answers_later(cl, addr):
    """Node 2 starts on the silent address: said at info, listed active, not unreachable."""
    node = cl.nodes[0]
    cl.start(1)
    cl.wait_converged(timeout=10)
    node.wait_log(lambda t: re.search(r"info\s+cluster\s+peer %s answered after [\d.]+s "
                                      r"unreachable node=%s" % (re.escape(addr),
                                                                re.escape(cl.node_id(1))), t),
                  message="the first answer of %s" % addr)
    assert addr not in cl.view(0), "listed by id once known: %r" % cl.view(0)
    m = scrape(node)
    assert m.value("piko_cluster_nodes", status="unreachable") == 0
    assert m.value("piko_cluster_nodes", status="active") == 2
    assert m.value("piko_cluster_peer_unreachable_total") == 1
    assert len(warn_lines(node, addr)) == 1


def test_join_address_with_nothing_listening(piko):
    cl = Cluster(piko, 2, start=False)
    cl.start(0)
    addr = cl.cluster_addr(1)
    check_unreachable(cl, addr)
    assert "Couldn't connect" in warn_lines(cl.nodes[0], addr)[0]
    check_answers_later(cl, addr)


def test_join_address_that_accepts_and_never_answers(piko):
    cl = Cluster(piko, 2, start=False)
    # Connections are accepted (by the kernel, into the backlog) and never answered.
    mute = socket.socket()
    mute.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    mute.bind(("127.0.0.1", cl.ports[1]["cluster"]))
    mute.listen(64)
    try:
        cl.start(0)
        addr = cl.cluster_addr(1)
        check_unreachable(cl, addr)
    finally:
        mute.close()
    time.sleep(0.2 * SLOW)
    check_answers_later(cl, addr)
