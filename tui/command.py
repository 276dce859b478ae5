"""`llm-sidecar monitor`, registered as a plugin command so the server never imports Textual."""

from __future__ import annotations

import click


@click.command()
@click.option("-c", "--config", "config_path", metavar="PATH", help="Config whose control socket to attach to.")
@click.option("--control-socket", metavar="PATH", help="Control socket of the sidecar to watch.")
def monitor(config_path: str | None, control_socket: str | None) -> None:
    """Open the live dashboard: node health, traffic, manual failover."""
    from sidecar.control.client import find_socket

    from .app import MonitorApp

    MonitorApp(find_socket(control_socket, config_path)).run()
