"""The embedded etcd of `modelroute serve`: two servers starting at once must not end up
sharing one etcd (the first free-port check races with the other's bind)."""

from __future__ import annotations

from pathlib import Path

from modelroute.storage.embedded_etcd import EmbeddedEtcd


def test_a_port_taken_meanwhile_means_other_ports_not_the_other_etcd(tmp_path: Path) -> None:
    first = EmbeddedEtcd(tmp_path / "a" / "etcd")
    first.start()
    try:
        second = EmbeddedEtcd(tmp_path / "b" / "etcd")
        second.client_port = first.client_port  # as if both had checked the port at once
        second.start()
        try:
            assert second.endpoint != first.endpoint
            assert (tmp_path / "b" / "etcd.endpoint").read_text().strip() == second.endpoint
            assert (tmp_path / "b" / "etcd" / "member").is_dir()  # its own data, running
        finally:
            second.stop()
    finally:
        first.stop()
