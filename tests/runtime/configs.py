"""Configs for the runtime tests: one registry, state in a temp folder, more YAML added."""

from __future__ import annotations

from pathlib import Path

from appliance.config.model import Config, parse_config


def config(tmp_path: Path, more: str = "", hosts: str = "registry-1.docker.io") -> Config:
    text = (
        f"appliance: {{ipv4: 192.0.2.1}}\nstate_dir: {tmp_path / 'state'}\n"
        f"registries:\n  - name: docker.io\n    hosts: [{hosts}]\n{more}"
    )
    return parse_config(text, tmp_path / "config.yaml")
