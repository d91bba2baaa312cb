"""`pacs-ai-node serve` fails clearly when it cannot start."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from node.admin.cli import app
from tests.peers import write_node_config


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config, _ = write_node_config(
            tmp_path,
            dicom_port=port,
            destinations={"pacs": {"host": "h", "port": 1, "ae_title": "P"}},
        )
        result = CliRunner().invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1 (DICOM port {port}" in result.output


def test_rule_naming_an_unknown_destination_stops_the_start(tmp_path: Path) -> None:
    config, _ = write_node_config(tmp_path)  # the shipped rules send to "pacs", not configured
    result = CliRunner().invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 1
    assert "destination 'pacs' is not configured" in result.output


def test_invalid_environment_value_stops_the_start(tmp_path: Path) -> None:
    config, _ = write_node_config(tmp_path)
    result = CliRunner().invoke(
        app, ["serve", "--config", str(config)], env={"NODE_DICOM_PORT": "not-a-port"}
    )
    assert result.exit_code == 1
    assert "NODE_DICOM_PORT" in result.output
