"""sd_notify over a real Unix datagram socket, as systemd listens for it."""
from __future__ import annotations

import os
import socket

from gridedge.sdnotify import Notifier


def test_ready_watchdog_and_status_arrive_as_datagrams(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_s == 15.0
        assert n.ready("connected, 3 devices") and n.watchdog() and n.status("line\nbreak") and n.stopping()
        got = [srv.recv(4096).decode() for _ in range(4)]
        n.close()
    assert got == ["READY=1\nSTATUS=connected, 3 devices", "WATCHDOG=1", "STATUS=line break", "STOPPING=1"]


def test_abstract_socket_names_work(tmp_path):
    name = f"gridedge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert srv.recv(64) == b"READY=1"
        n.close()


def test_outside_systemd_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None and not n.ready() and not n.watchdog()


def test_the_watchdog_belongs_to_the_main_pid_only():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "junk"}).watchdog_s is None


def test_a_vanished_socket_is_not_an_error(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
