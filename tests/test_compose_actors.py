"""compose.actors.yaml: extra actors on another machine against a central stack. Valid
Compose, the same actor command as compose.yaml, every credential required, and the
environment that actors.env.example gives it is a configuration the actor accepts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from shared.config import load_config
from tests.test_compose import SCHEMA, SERVICES, interpolate

ROOT = Path(__file__).resolve().parents[1]
ACTORS = yaml.safe_load((ROOT / "compose.actors.yaml").read_text())
EXAMPLE = dict(line.split("=", 1) for line in (ROOT / "actors.env.example").read_text().splitlines()
               if line and not line.startswith("#"))


def test_actors_file_is_valid_compose_running_the_stacks_actor():
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(ACTORS)
    assert set(ACTORS["services"]) == {"actor"}
    actor = ACTORS["services"]["actor"]
    assert actor["command"] == SERVICES["actor"]["command"]
    assert actor["image"] == SERVICES["actor"]["image"] and actor["healthcheck"] == SERVICES["actor"]["healthcheck"]
    assert "container_name" not in actor and "ports" not in actor  # --scale actor=N


def test_actors_need_only_the_broker_and_s3_with_required_credentials():
    environment = ACTORS["services"]["actor"]["environment"]
    for key in ("CARTRIDGE_BROKER_URL", "CARTRIDGE_STORAGE_S3_ENDPOINT_URL",
                "CARTRIDGE_STORAGE_S3_ACCESS_KEY", "CARTRIDGE_STORAGE_S3_SECRET_KEY"):
        assert environment[key] == f"${{{key}:?copy actors.env.example to actors.env}}", key
    assert not any("POSTGRES" in key for key in environment)
    assert (ROOT / ".gitignore").read_text().splitlines().count("actors.env") == 1


def test_the_example_environment_is_a_valid_actor_config():
    environment = {key: interpolate(str(value), EXAMPLE) for key, value in ACTORS["services"]["actor"]["environment"].items()}
    config = load_config(ROOT / "config.toml", environ=environment)
    assert config.broker.url == EXAMPLE["CARTRIDGE_BROKER_URL"]
    assert config.storage.s3_endpoint_url == EXAMPLE["CARTRIDGE_STORAGE_S3_ENDPOINT_URL"]
    assert config.storage.s3_secret_key == EXAMPLE["CARTRIDGE_STORAGE_S3_SECRET_KEY"]
    assert config.metrics.port == 9464
