"""Config: file, environment and command-line layers; errors that name the key."""

import subprocess
import sys

import pytest

from shared.config import ConfigError, load_config, mask_url, parse_overrides


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_repo_config():
    cfg = load_config(environ={})
    assert cfg.common.env_id == "connect4"
    assert cfg.mcts.num_simulations == 100
    assert cfg.mcts.temp_threshold == 15
    assert cfg.training.steps_per_iteration == 1000
    assert cfg.actor.max_episodes == -1


def test_file_then_env_then_cli(tmp_path):
    path = write(tmp_path, "[mcts]\nnum_simulations = 50\nc_puct = 2.0\n[common]\nenv_id = 'tictactoe'\n")
    cfg = load_config(path, environ={})
    assert (cfg.mcts.num_simulations, cfg.mcts.c_puct, cfg.common.env_id) == (50, 2.0, "tictactoe")
    env = {"CARTRIDGE_MCTS_NUM_SIMULATIONS": "70", "CARTRIDGE_COMMON_ENV_ID": "connect4",
           "CARTRIDGE_MCTS_TREE_REUSE": "false",
           "CARTRIDGE_STORAGE_REPLAY_BACKEND": "sqlite",
           "CARTRIDGE_STORAGE_POSTGRES_URL": "postgresql://u@db:5432/x"}
    cfg = load_config(path, environ=env)
    assert cfg.mcts.num_simulations == 70 and cfg.mcts.c_puct == 2.0
    assert cfg.common.env_id == "connect4" and cfg.mcts.tree_reuse is False
    assert cfg.storage.replay_backend == "sqlite"
    assert cfg.storage.postgres_url == "postgresql://u@db:5432/x"
    cfg = load_config(path, environ=env, overrides=parse_overrides(["mcts.num_simulations=90"]))
    assert cfg.mcts.num_simulations == 90


def test_non_config_env_vars_are_left_alone():
    cfg = load_config(environ={"CARTRIDGE_TEST_S3_URL": "http://x", "CARTRIDGE_CONFIG_DIR": "y"})
    assert cfg.mcts.num_simulations == 100


@pytest.mark.parametrize("text, words", [
    ("[mcts]\nnum_simulation = 5\n", ["[mcts]", "num_simulation"]),
    ("[mctss]\nnum_simulations = 5\n", ["mctss"]),
    ("[mcts]\nnum_simulations = -5\n", ["num_simulations", ">= 1"]),
    ("[training]\nbatch_size = 0\n", ["batch_size", ">= 1"]),
    ("[mcts]\nc_puct = 'high'\n", ["c_puct", "float"]),
    ("[storage]\nreplay_backend = 'redis'\n", ["replay_backend", "postgres"]),
    ("[storage]\nreplay_table = 'x; drop table y'\n", ["replay_table"]),
    ("[common]\nenv_id = 'chess'\n", ["env_id", "chess", "connect4"]),
    ("[storage]\nretain_positions = 1000\n", ["storage.retain_positions", "1000", "training.window_size"]),
    ("[mcts\n", ["config.toml"]),
])
def test_bad_file_values_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("env, words", [
    ({"CARTRIDGE_MCTS_NUM_SIMULATONS": "5"}, ["CARTRIDGE_MCTS_NUM_SIMULATONS", "num_simulatons"]),
    ({"CARTRIDGE_MCTS_NUM_SIMULATIONS": "lots"}, ["num_simulations", "int"]),
    ({"CARTRIDGE_ACTOR_PARALLEL_GAMES": "0"}, ["parallel_games"]),
    ({"CARTRIDGE_STORAGE_S3_BUCKET": "dl"}, ["s3_bucket"]),
    ({"CARTRIDGE_STORAGE_S3_BUCKET": "Models_2"}, ["s3_bucket"]),
    ({"CARTRIDGE_BROKER_URL": "amqp+ssl://h/"}, ["url", "amqps?://"]),
    ({"CARTRIDGE_BROKER_MANAGEMENT_URL": "h:15671"}, ["management_url", "https?://"]),
    ({"CARTRIDGE_STORAGE_S3_ENDPOINT_URL": "s3://h"}, ["s3_endpoint_url"]),
    ({"CARTRIDGE_BROKER_CA_FILE": "/no/such/ca.pem"}, ["ca_file", "/no/such/ca.pem", "does not exist"]),
    ({"CARTRIDGE_STORAGE_S3_CA_FILE": "/no/such/ca.pem"}, ["s3_ca_file", "does not exist"]),
    ({"CARTRIDGE_STORAGE_POSTGRES_URL": "postgresql://u:pw@h/x?sslrootcert=/ca.pem"},
     ["postgres_url", "sslrootcert", "verify-full"]),
    ({"CARTRIDGE_STORAGE_POSTGRES_URL": "postgresql://u@h/x?sslmode=prefer&sslrootcert=/ca.pem"},
     ["postgres_url", "prefer", "not be checked"]),
])
def test_bad_env_values_name_the_key(env, words):
    with pytest.raises(ConfigError) as err:
        load_config(environ=env)
    for word in words:
        assert word in str(err.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["num_simulations=5"])


def test_passwords_are_masked_in_urls():
    assert mask_url("amqp://guest:secret@rabbit:5672/") == "amqp://guest:***@rabbit:5672/"
    assert "secret" not in mask_url("postgresql://app:secret@db/cartridge")
    assert mask_url("http://minio:9000") == "http://minio:9000"
    assert mask_url("amqps://actor:s3cret@rabbit:5671/?cafile=/ca.pem") == "amqps://actor:***@rabbit:5671/?cafile=/ca.pem"
    assert "s3cret" not in mask_url("postgresql://app:s3cret@db/x?sslmode=verify-full&sslrootcert=/ca.pem")


def test_tls_is_switched_by_the_urls_and_a_ca_file_needs_one(tmp_path):
    """amqps://, https:// and sslmode=verify-full with the CA files that go with them are
    accepted; a CA file next to a plaintext URL is an error (it would never be used), so a
    half-done switch to TLS never runs in plaintext unnoticed."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # read when connecting, not here
    tls = {"CARTRIDGE_BROKER_URL": "amqps://actor:pw@rabbit:5671/", "CARTRIDGE_BROKER_CA_FILE": str(ca),
           "CARTRIDGE_BROKER_MANAGEMENT_URL": "https://rabbit:15671",
           "CARTRIDGE_STORAGE_POSTGRES_URL": f"postgresql://u@db/x?sslmode=verify-full&sslrootcert={ca}",
           "CARTRIDGE_STORAGE_S3_ENDPOINT_URL": "https://minio:9000", "CARTRIDGE_STORAGE_S3_CA_FILE": str(ca)}
    cfg = load_config(environ=tls)
    assert cfg.broker.ca_file == cfg.storage.s3_ca_file == str(ca)
    assert cfg.storage.postgres_url.endswith(f"sslrootcert={ca}")
    assert load_config(environ={}).broker.ca_file == ""  # default: the system's trust store
    for plaintext, words in [
        ({"CARTRIDGE_BROKER_URL": "amqp://actor:pw@rabbit/", "CARTRIDGE_BROKER_MANAGEMENT_URL": "http://rabbit:15672"},
         ["[broker]", "ca_file", "plaintext"]),
        ({"CARTRIDGE_STORAGE_S3_ENDPOINT_URL": "http://minio:9000"}, ["[storage]", "s3_ca_file", "plaintext"]),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(environ={**tls, **plaintext})
        for word in words:
            assert word in str(err.value)
    # One of the broker's two connections on TLS is enough for its CA file.
    assert load_config(environ={**tls, "CARTRIDGE_BROKER_URL": "amqp://actor:pw@rabbit/"}).broker.ca_file


def test_service_exits_2_naming_the_key():
    result = subprocess.run(
        [sys.executable, "-m", "services.trainer", "--set", "training.batch_size=0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "batch_size" in result.stderr


def test_readme_configuration_table_matches_the_config_structs():
    """Every key, default, variable and description in the README comes from
    shared/config.py (regenerate with `python scripts/config_table.py`)."""
    from pathlib import Path
    table = subprocess.run([sys.executable, "scripts/config_table.py"], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines()
    assert len(table) > 40
    missing = [row for row in table if row not in readme]
    assert not missing, "README configuration table is stale:\n" + "\n".join(missing)


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("service, dependency", [("ingest", "broker"), ("trainer", "postgres"),
                                                 ("actor", "s3")])
def test_an_unreachable_dependency_is_retried_then_a_clear_exit(service, dependency, broker_names, tmp_path):
    """Connection failures at start-up are retried with backoff and logged; a dependency
    that stays away ends the service with status 1 and one line naming it (password
    masked), not a traceback or a tight crash loop."""
    port = _closed_port()
    sets = [f"broker.{k}={v}" for k, v in broker_names.items()]
    sets += ["broker.connect_attempts=3", "storage.connect_attempts=3", "common.env_id=tictactoe",
             f"storage.sqlite_path={tmp_path / 'r.sqlite'}"]
    sets += {
        "broker": [f"broker.url=amqp://guest:s3cret@127.0.0.1:{port}/"],
        "postgres": [f"storage.postgres_url=postgresql://postgres:s3cret@127.0.0.1:{port}/x",
                     "storage.model_store=local", f"storage.local_model_dir={tmp_path}"],
        "s3": [f"storage.s3_endpoint_url=http://127.0.0.1:{port}", "storage.s3_access_key=k",
               "storage.s3_secret_key=s3cret"],
    }[dependency]
    result = subprocess.run([sys.executable, "-m", f"services.{service}",
                             *[a for s in sets for a in ("--set", s)]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "unreachable after 3 attempts" in result.stderr
    assert result.stderr.count("retrying in") == 2  # logged, with backoff
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cartridge {service}:") and str(port) in last, last


def test_list_keys_from_text_are_comma_separated():
    cfg = load_config(environ={"CARTRIDGE_EVAL_ANCHORS": "random, one-ply,alphabeta-3"})
    assert cfg.eval.anchors == ("random", "one-ply", "alphabeta-3")
    cfg = load_config(environ={}, overrides=parse_overrides(["eval.anchors=random,alphabeta-5"]))
    assert cfg.eval.anchors == ("random", "alphabeta-5")
    with pytest.raises(ConfigError, match="anchors"):
        load_config(environ={"CARTRIDGE_EVAL_ANCHORS": "one-ply,alphabeta-3"})  # no random
