"""``advrec stack up`` and ports: refused before anything starts when a port is held, and the services
follow the gateway's port so two stacks differ by ``--port`` alone."""

from __future__ import annotations

import argparse
import socket

import pytest

from advrec_common.errors import Conflict

from .conftest import free_port

pytestmark = pytest.mark.stack


def test_up_refuses_ports_held_by_another_program_naming_each(tmp_path, redis_url):
    from advrec.stack.launcher import Stack, StackConfig

    gateway_port, free = free_port(), free_port()
    with socket.socket() as held_gateway, socket.socket() as held_service:
        held_gateway.bind(("127.0.0.1", gateway_port))
        held_gateway.listen()
        held_service.bind(("127.0.0.1", 0))
        held_service.listen()
        service_port = held_service.getsockname()[1]
        stack = Stack(StackConfig(home=tmp_path / "h", port=gateway_port, redis_url=redis_url,
                                  service_ports={"extractor": free, "attacker": service_port,
                                                 "recommender": free_port()}))
        assert stack.busy_ports() == [f"{gateway_port} (gateway)", f"{service_port} (attacker)"]
        with pytest.raises(Conflict, match=rf"in use on 127\.0\.0\.1: {gateway_port} \(gateway\), "
                                           rf"{service_port} \(attacker\).*--port N"):
            stack.up(timeout=5)
    assert not (tmp_path / "h" / "stack").exists()  # nothing was started or written
    assert stack.busy_ports() == []


def test_the_services_listen_next_to_the_gateway():
    from advrec.commands.stack import _stack

    args = argparse.Namespace(home="/tmp/advrec-ports-home", port=8100, redis_url=None, no_services=False)
    config = _stack(args).config
    assert (config.port, config.service_ports) == (8100, {"extractor": 8101, "attacker": 8102, "recommender": 8103})
