"""Typed configuration: `config.toml`, then `CARTRIDGE_<SECTION>_<KEY>` environment
variables, then command-line overrides, validated in one place.

Every field is documented where it is declared; a wrong key or value stops a service at
start-up with a `ConfigError` naming the key and what was expected.
"""

from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import parse_qs, urlsplit

import msgspec
from msgspec import Meta

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]
# Table and schema names end up in SQL text, so they are held to a strict pattern.
Identifier = Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
# S3's bucket naming rules (3-63 lowercase letters, digits, dots, hyphens): a bad name is
# a config error at start-up, not an "unreachable" endpoint retried for minutes.
BucketName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
# A file of CA certificates (PEM) to trust, or empty for the system's trust store; must
# exist when set (checked with its section, see `_check_ca_file`).
CaFile = Annotated[str, Meta(max_length=4096)]
# The scheme says whether a connection uses TLS: a typo (`amqp+ssl://`) is a config error,
# never a plaintext connection.
AmqpUrl = Annotated[str, Meta(pattern=r"^amqps?://")]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://")]
PostgresUrl = Annotated[str, Meta(pattern=r"^postgres(ql)?://")]
# PostgreSQL's `sslmode` values (libpq's, as asyncpg reads them) under which the server's
# certificate is checked against `sslrootcert`.
VERIFYING_SSLMODES = ("require", "verify-ca", "verify-full")

ENV_PREFIX = "CARTRIDGE_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(ValueError):
    """A configuration key is unknown or its value is not what was expected."""


def _check_ca_file(key: str, path: str) -> None:
    # At start-up, not at the first connection: a missing CA file is a typo, not an outage.
    if path and not Path(path).is_file():
        raise ValueError(f"{key}: CA file {path!r} does not exist (or is not a file)")


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class CommonConfig(_Section):
    env_id: str = "connect4"
    """Which game is played and learned (`connect4`, `tictactoe`)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging threshold for every service."""


class NetworkConfig(_Section):
    blocks: PositiveInt = 4
    """Residual blocks in the policy-value tower. 6 had the best search accuracy of any hour
    (one run) but lost head to head to 4, with a quarter fewer training steps (README,
    "Learning speed")."""
    channels: PositiveInt = 64
    """Convolution channels in every block."""


class MCTSConfig(_Section):
    num_simulations: PositiveInt = 100
    """Simulations (network evaluations) per self-play move. 100 made stronger models than
    200 in 30-minute runs (README, "Levers measured"): twice the positions, each trained
    on about half as often. 50 was level with 100 at 30 minutes and over an hour (no gain
    shown). The evaluator and the web page search `eval.simulations`."""
    c_puct: PositiveFloat = 1.5
    """Exploration constant of the PUCT rule."""
    dirichlet_alpha: PositiveFloat = 1.0
    """Concentration of the Dirichlet noise mixed into the root priors."""
    dirichlet_epsilon: Probability = 0.25
    """Weight of that noise (0 disables it)."""
    temperature: Annotated[float, Meta(ge=0)] = 1.0
    """Move-selection temperature for the first `temp_threshold` plies."""
    temp_threshold: NonNegInt = 15
    """Plies played at `temperature`; after it moves are (near-)greedy."""
    final_temperature: Annotated[float, Meta(ge=0)] = 0.0
    """Temperature after `temp_threshold` (0 = most visited move)."""
    tree_reuse: bool = True
    """Keep the subtree of the move played as the next search's root."""
    resign_enabled: bool = False
    """Let a side resign when its best move's value falls below `resign_threshold`."""
    resign_threshold: Annotated[float, Meta(ge=-1, le=0)] = -0.95
    """Value of the best root move (side to move's view) under which it resigns."""
    discount: Annotated[float, Meta(gt=0, le=1)] = 1.0
    """Per-ply discount of game results, in the search's backups and in self-play's value
    targets alike: a win k plies ahead is worth `discount ** k`, a loss `-discount ** k`,
    so search and network prefer faster wins and slower losses (what a solver calls
    the best move). 1: a win is worth 1 however far off (AlphaZero). Values (and so
    `resign_threshold`) then shrink with the distance to the end."""
    fpu_reduction: Annotated[float, Meta(ge=0)] = 0.25
    """First-play urgency: unvisited children start at the parent's value minus this."""
    fpu_at_noisy_root: bool = True
    """Whether `fpu_reduction` applies at a root that got Dirichlet noise too. False
    (KataGo's choice): that root's unvisited moves start at the root's own value, so the
    moves the noise favours do get tried; everywhere else `fpu_reduction` applies."""
    full_search_fraction: Probability = 1.0
    """Playout cap randomisation (KataGo), in self-play: the fraction of moves searched
    with `num_simulations` and root noise, whose visit distributions are the policy
    targets; the other moves get `fast_simulations` without noise and train the value
    only (their rows carry policy weight 0). 1: every move is a full search."""
    fast_simulations: PositiveInt = 40
    """Simulations of the other moves, with `full_search_fraction` below 1."""

    def __post_init__(self):
        if self.full_search_fraction < 1 and self.fast_simulations >= self.num_simulations:
            raise ValueError(
                f"mcts.fast_simulations ({self.fast_simulations}) must be below num_simulations "
                f"({self.num_simulations}) when full_search_fraction is below 1")


class ActorConfig(_Section):
    actor_id: str = ""
    """Unique actor name; empty means `<hostname>-<pid>`."""
    max_episodes: Annotated[int, Meta(ge=-1)] = -1
    """Games to finish before exiting; -1 runs forever."""
    parallel_games: PositiveInt = 256
    """Games searched together, one batched network call per simulation step."""
    games_per_message: PositiveInt = 1
    """Finished games gathered into one transition message."""
    max_unconfirmed: PositiveInt = 256
    """Publishes awaiting broker confirmation before self-play waits."""
    eval_cache_positions: NonNegInt = 100_000
    """Network evaluations each actor remembers, so that a position met again (in another
    game or tree) is not evaluated again: the same outputs, about 40 % fewer network calls
    in Connect4 self-play, ~30 MB per actor; emptied at every new model. 0: no cache."""
    onnx_threads: PositiveInt = 1
    """onnxruntime intra-op threads (one per process wins when processes share cores)."""
    confirmed_log: str = ""
    """File that gets one JSON line per message the broker confirmed (batch id, rows,
    plies per game id): an audit trail of what this actor handed over; empty: none."""


class TrainingConfig(_Section):
    steps_per_iteration: PositiveInt = 1000
    """Optimizer steps per cycle; each cycle ends by publishing a model."""
    first_cycle_steps: Annotated[int, Meta(ge=0)] = 0
    """Steps before the first model (0: `steps_per_iteration`). A short first cycle ends
    the uniform-search phase sooner: until model 1 the actors search with a uniform
    evaluator, fast and weak, and flood the window with its positions."""
    batch_size: PositiveInt = 256
    """Positions per optimizer step."""
    learning_rate: PositiveFloat = 1e-3
    """Adam learning rate (the schedule's start with `learning_rate_decay_steps`). 0.002
    learned faster in the first half hour, no gain shown over the hour (README, "Learning
    speed")."""
    learning_rate_decay_steps: NonNegInt = 0
    """Steps over which the learning rate falls along a half cosine from `learning_rate`
    to `learning_rate * learning_rate_floor`, staying there afterwards. The schedule is a
    function of the training step: a resumed trainer carries on along it. 0: constant."""
    learning_rate_floor: Probability = 0.1
    """With `learning_rate_decay_steps`: the final learning rate, as a fraction of
    `learning_rate`."""
    weight_decay: Annotated[float, Meta(ge=0)] = 1e-4
    """L2 penalty on the weights (with `decoupled_weight_decay`, the shrink per step per
    unit of learning rate). 1e-5 kept every channel alive but lost head to head over an
    hour (README, "Learning speed")."""
    decoupled_weight_decay: bool = False
    """Shrink the weights directly, by `learning_rate * weight_decay` of themselves every
    step (AdamW), instead of adding the L2 penalty's gradient, which Adam scales up for the
    weights whose own gradient is small: coupled, the penalty drives the weights of channels
    that stop learning to zero at about the learning rate per step. Decoupled decay wants a
    larger `weight_decay` (AdamW's usual 0.01 shrinks by 1e-5 a step at the default rate).
    True with 0.01 kept every channel alive over an hour, no gain shown (README)."""
    average_decay: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    """Publish an exponential moving average of the weights instead of the newest ones
    (KataGo publishes averages too): after every step the average moves `1 - decay` of the
    way to the weights (with a warm-up: at most `(1 + n) / (10 + n)` after n steps, so the
    random start is soon forgotten). Training goes on with the newest weights; only the
    published models (and the checkpoint, which keeps both) see the average. 0: off; 0.998
    averages over about the last 500 steps."""
    min_transitions: PositiveInt = 5000
    """Positions the replay buffer must hold before training starts."""
    window_size: PositiveInt = 200_000
    """Newest positions sampled from (the replay window); with `window_taper_start`, the
    most the window grows to. 500,000 (with `drop_uniform_positions`) showed no gain over
    an hour (README, "Learning speed")."""
    window_taper_start: NonNegInt = 0
    """Grow the window with the data (KataGo's taper): while at most this many positions
    have been stored, the window is all of them; beyond, it is `window_taper_start * (1 +
    window_taper_growth * ((stored / window_taper_start) ** window_taper_exponent - 1) /
    window_taper_exponent)`, up to `window_size`. Early, weak data then leaves the window
    sooner. 0: off, the window is `window_size` from the start."""
    window_taper_exponent: Annotated[float, Meta(gt=0, le=1)] = 0.75
    """How fast the tapered window grows past `window_taper_start` (1: linearly)."""
    window_taper_growth: PositiveFloat = 0.4
    """Scale of that growth: at 1 with exponent 1 the window is every position stored."""
    drop_uniform_positions: bool = False
    """Once the window holds `min_transitions` positions played by a model, stop sampling
    the positions played before model 1 (searched with the uniform evaluator): many and
    weak, they would otherwise fill the window long after the first model."""
    average_duplicates: bool = False
    """Sample the window's distinct positions uniformly, each with its targets averaged over
    every copy (the policy over the copies whose policy counts), instead of its rows: the
    openings that every game repeats stop dominating the batches, and a repeated
    position's value target is a mean of many results rather than one."""
    search_value_weight: Probability = 0.5
    """Weight of the search's value in the value target: `(1 - w) * result + w * root
    value`, both from the side to move's view (the root value is the mean over the
    search that chose the move). 0: the game's result alone, as AlphaZero. The result is
    what really happened but carries every later move's noise; the root value is what
    the search thought, biased by the network that searched. 0.5 learned fastest of the
    values measured (README, "Levers measured")."""
    samples_per_position: Annotated[float, Meta(ge=0)] = 0.0
    """Target training samples per new position (0: no target; the ratio is whatever the
    CPU split makes it). The trainer waits when it has drawn more than this allows for the
    positions stored since it started (its first load counts as `min_transitions`), and
    announces its pace on the events exchange so that actors pause while stored positions
    run ahead of it by more than `position_lead`: the ratio becomes a setting, whatever
    the number of actors or the trainer's speed."""
    position_lead: PositiveInt = 20_000
    """With `samples_per_position`: how many positions the stored data may run ahead of
    the trainer before actors pause self-play (they play on if the trainer falls silent)."""
    checkpoint_every: PositiveInt = 1
    """Cycles between checkpoints (weights, optimizer, step, data cursor)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device; `auto` picks CUDA when present."""
    threads: PositiveInt = 1
    """Torch intra-op threads."""

    def __post_init__(self):
        t = self.samples_per_position
        if t and self.position_lead * t < self.batch_size:
            raise ValueError(
                f"training.position_lead ({self.position_lead}) x samples_per_position ({t:g}) is below "
                f"batch_size ({self.batch_size}): actors would wait for a trainer that waits for a whole batch")


class StorageConfig(_Section):
    replay_backend: Literal["postgres", "sqlite"] = "postgres"
    """Where transitions are stored."""
    postgres_url: PostgresUrl = "postgresql://postgres@127.0.0.1:5432/cartridge"
    """Replay database (created if missing). TLS through libpq's URL parameters:
    `?sslmode=verify-full&sslrootcert=/path/ca.pem` checks the server's certificate and
    host name against that CA (without `sslmode`, asyncpg tries TLS unchecked and falls
    back to plaintext)."""
    replay_table: Identifier = "transitions"
    """Table holding transitions."""
    sqlite_path: str = "runs/replay.sqlite"
    """Replay file for the `sqlite` back end."""
    model_store: Literal["s3", "local"] = "s3"
    """Where model versions and checkpoints are kept."""
    s3_endpoint_url: Annotated[str, Meta(pattern=r"^$|^https?://")] = "http://127.0.0.1:9000"
    """S3-compatible endpoint (MinIO, Ceph, AWS); empty means AWS default (HTTPS).
    `https://` for TLS."""
    s3_ca_file: CaFile = ""
    """CA certificates (PEM) trusted for an `https://` `s3_endpoint_url`, for a server
    whose certificate a private CA signed; empty: botocore's trust store."""
    s3_bucket: BucketName = "cartridge"
    """Bucket for models and checkpoints (created if missing)."""
    s3_region: str = "us-east-1"
    """Region sent to the endpoint."""
    s3_access_key: str = ""
    """Access key (set it through the environment); empty: the usual AWS credential chain."""
    s3_secret_key: str = ""
    """Secret key (set it through the environment); empty: the usual AWS credential chain."""
    local_model_dir: str = "runs/models"
    """Directory for the `local` model store."""
    max_model_bytes: PositiveInt = 64 * 1024 * 1024
    """Largest model file an actor will download."""
    connect_attempts: PositiveInt = 30
    """Start-up attempts (with backoff) to reach PostgreSQL and the model store before giving up."""
    retain_positions: PositiveInt = 1_000_000
    """Positions the replay keeps (at least; older ones are dropped a partition at a time).
    Never below `training.window_size`: the trainer must always find a whole window."""
    partition_positions: PositiveInt = 100_000
    """Positions per replay partition (PostgreSQL range partition of ids; for SQLite the
    step of its deletes): what retention drops at once, so the table holds up to
    `retain_positions` plus about two partitions."""
    ledger_retention_hours: PositiveFloat = 168.0
    """How long a batch id stays in the ledger after its batch was stored (measured back
    from the newest entry): a redelivery later than this would be stored again."""
    keep_checkpoints: PositiveInt = 5
    """Newest trainer checkpoints kept in the model store; older ones are deleted."""

    def __post_init__(self):
        _check_ca_file("s3_ca_file", self.s3_ca_file)
        if self.s3_ca_file and not self.s3_endpoint_url.startswith("https://"):
            raise ValueError(f"s3_ca_file is set but s3_endpoint_url {mask_url(self.s3_endpoint_url)!r} is "
                             "not https://: the CA would never be used and the connection would be plaintext")
        query = parse_qs(urlsplit(self.postgres_url).query)
        sslmode = query.get("sslmode", [""])[-1]
        if query.get("sslrootcert") and sslmode not in VERIFYING_SSLMODES:
            raise ValueError(f"postgres_url names an sslrootcert but its sslmode is {sslmode or 'unset (prefer)'}: "
                             f"the certificate would not be checked; use sslmode=verify-full")


class BrokerConfig(_Section):
    url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/"
    """AMQP URL of RabbitMQ; `amqps://` (port 5671 unless given) for TLS."""
    ca_file: CaFile = ""
    """CA certificates (PEM) trusted for the broker's TLS (an `amqps://` `url` and an
    `https://` `management_url`), for certificates a private CA signed; empty: the
    system's trust store."""
    transitions_queue: str = "cartridge.transitions"
    """Durable queue of transition batches."""
    dead_letter_exchange: str = "cartridge.dead"
    """Exchange receiving rejected transition messages."""
    dead_letter_queue: str = "cartridge.transitions.dead"
    """Queue keeping rejected messages for inspection."""
    models_exchange: str = "cartridge.models"
    """Fanout exchange for model-published and reload events."""
    evaluator_queue: str = "cartridge.evaluator"
    """The evaluator's durable queue on the models exchange: events published while it is
    down wait there, so a restart misses no model."""
    max_message_bytes: PositiveInt = 4 * 1024 * 1024
    """Largest transition message accepted."""
    max_backlog_bytes: PositiveInt = 256 * 1024 * 1024
    """Bound on the transitions queue (bytes of message bodies waiting for ingest): beyond it
    the broker refuses new games and actors wait, instead of the backlog filling the broker's
    disk or memory until a resource alarm blocks every publisher, model events included.
    Fixed when the queue is created (a policy may lower it later)."""
    max_dead_letter_bytes: PositiveInt = 64 * 1024 * 1024
    """Bound on the dead-letter queue (bytes of message bodies): beyond it the oldest
    rejected messages are dropped. Fixed when the queue is created (a policy may lower it)."""
    connect_attempts: PositiveInt = 30
    """Start-up connection attempts (with backoff) before giving up."""
    heartbeats: str = "cartridge.heartbeats"
    """Fanout exchange every service sends its heartbeat (its status snapshot) to, and the
    stream queue of the same name that keeps them for an hour: what `cartridge status` and
    the web page read."""
    management_url: HttpUrl = "http://127.0.0.1:15672"
    """RabbitMQ's management API (queue depths), logged in as `url`'s user and password
    (sent with every request: use `https://` whenever it leaves the machine)."""
    declare: bool = True
    """Declare the exchanges and queues at start-up (a login with every right, as guest in
    development). false: only check that they exist (passive declares need no right), as a
    least-privilege login must; `cartridge provision` declares them as the admin."""

    def __post_init__(self):
        _check_ca_file("ca_file", self.ca_file)
        if self.ca_file and not (self.url.startswith("amqps://") or self.management_url.startswith("https://")):
            raise ValueError("ca_file is set but neither url nor management_url uses TLS (amqps://, https://): "
                             "the CA would never be used and the connections would be plaintext")


class IngestConfig(_Section):
    prefetch: PositiveInt = 2048
    """Unacknowledged messages the broker may hand to ingest at once."""
    flush_rows: PositiveInt = 10_000
    """Rows gathered before a COPY."""
    flush_ms: PositiveInt = 250
    """Longest wait before a partial flush."""


class MetricsConfig(_Section):
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    """HTTP port of the service's `/metrics`, `/healthz` and `/readyz`; 0: none (`cartridge
    up` serves one endpoint for all its processes, on 9464 unless set)."""
    host: str = "127.0.0.1"
    """Address that endpoint listens on (`0.0.0.0` in a container, so Prometheus reaches it)."""


AnchorName = Annotated[str, Meta(pattern=r"^(random|one-ply|alphabeta-[1-9])$")]


class EvalConfig(_Section):
    enabled: bool = True
    """Run the evaluator in `cartridge up` (a deployment runs `cartridge evaluator` or not)."""
    simulations: PositiveInt = 200
    """Search simulations per position for the searched accuracy."""
    positions: PositiveInt = 100
    """Labelled positions per stage searched for the searched accuracy (the raw-policy
    accuracy always uses every position)."""
    games: Annotated[int, Meta(ge=4, multiple_of=4)] = 40
    """Rating games per version, split over its two most informative opponents in pairs of
    colour-swapped openings (a multiple of 4)."""
    game_simulations: PositiveInt = 50
    """The model's search simulations per move in rating games."""
    opening_plies: NonNegInt = 2
    """Uniformly random plies opening every rating game, so games differ."""
    anchors: tuple[AnchorName, ...] = ("random", "one-ply", "alphabeta-2", "alphabeta-4", "alphabeta-6")
    """Fixed opponents (`random`, `one-ply`, `alphabeta-<depth 1-9>`); `random` is the
    rating anchor at 0 and must be one of them."""
    prior_draws: PositiveFloat = 1.0
    """Virtual draws per pair of players that met: keep ratings finite after perfect scores."""
    niceness: Annotated[int, Meta(ge=0, le=19)] = 0
    """CPU priority of the evaluator's process, as a nice value (0: as any service; 19:
    the lowest). Above 0 it yields the cores to self-play and training when it shares
    them (`cartridge up`, or one host for everything): it then evaluates fewer versions,
    always the newest waiting. Where the scheduler groups processes by session (Linux
    autogroup), its group's nice is set too, or the nice value alone would not count."""
    rating_window: PositiveInt = 200
    """Ratings are fitted over the anchors and the newest this many versions (the games
    among them), by the evaluator, the web page and `cartridge ratings` alike: a fit over
    every version of a run of weeks would grow with the cube of their number. Older
    versions show the rating they were given right after their own games (marked `*`);
    opponents are chosen within the window."""
    rollback: bool = True
    """Serve the best rated version again when a newer one rates clearly worse."""
    rollback_min_games: PositiveInt = 20
    """Games a version must have played before it can cause a rollback."""
    max_behind: PositiveInt = 3
    """Versions waiting beyond this many are recorded as skipped (the newest is always
    evaluated)."""
    onnx_threads: PositiveInt = 1
    """onnxruntime threads of the evaluator's model sessions."""

    def __post_init__(self):
        if "random" not in self.anchors:
            raise ValueError("anchors must include 'random' (ratings are anchored on it)")
        if len(set(self.anchors)) != len(self.anchors):
            raise ValueError("anchors has duplicates")


class StatusConfig(_Section):
    heartbeat_s: PositiveFloat = 5.0
    """Seconds between two heartbeats of every service."""
    missed_beats: PositiveInt = 3
    """A service not heard from for this many heartbeats is down."""
    lookback_s: Annotated[float, Meta(gt=0, le=3600)] = 900.0
    """How far back `cartridge status` and the web page read heartbeats: a service seen in
    this window and silent since is reported down (at most the stream's hour)."""


class WebConfig(_Section):
    enabled: bool = True
    """Serve the web page in `cartridge up` (`cartridge web` serves it in a deployment)."""
    host: str = "127.0.0.1"
    """Address the web page listens on (`0.0.0.0`: every interface)."""
    port: Annotated[int, Meta(ge=1, le=65535)] = 8470
    """Port of the web page."""
    max_simulations: PositiveInt = 1600
    """Most search simulations a player may ask of a model per move on the web page."""


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    common: CommonConfig = CommonConfig()
    network: NetworkConfig = NetworkConfig()
    mcts: MCTSConfig = MCTSConfig()
    actor: ActorConfig = ActorConfig()
    training: TrainingConfig = TrainingConfig()
    storage: StorageConfig = StorageConfig()
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    eval: EvalConfig = EvalConfig()
    metrics: MetricsConfig = MetricsConfig()
    status: StatusConfig = StatusConfig()
    web: WebConfig = WebConfig()

    def __post_init__(self):
        if self.storage.retain_positions < self.training.window_size:
            raise ValueError(
                f"storage.retain_positions ({self.storage.retain_positions}) is below training.window_size "
                f"({self.training.window_size}): the trainer would not find a whole window")


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in msgspec.structs.fields(Config)}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`CARTRIDGE_STORAGE_POSTGRES_URL=...` -> {"storage": {"postgres_url": "..."}}.

    Variables whose section is not a config section (e.g. `CARTRIDGE_TEST_S3_URL`) are
    not configuration and are left alone; an unknown key in a known section is an error.
    """
    sections = _sections()
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in sections:
            continue
        if key not in {f.name for f in msgspec.structs.fields(sections[section])}:
            raise ConfigError(f"{name}: [{section}] has no key {key!r}")
        out.setdefault(section, {})[key] = value
    return out


def parse_override(item: str) -> tuple[str, str, str]:
    """`section.key=value` (the form of `--set`) -> (section, key, value)."""
    path, sep, value = item.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    return section, key, value


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """Several `section.key=value` items -> the `overrides` mapping of `load_config`."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        section, key, value = parse_override(item)
        out.setdefault(section, {})[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read `path` (default: the repo's config.toml if present), then `defaults` (a
    command's own, e.g. `cartridge up`'s embedded back ends), then the environment, then
    explicit overrides (e.g. from command-line flags); validate; return a `Config`."""
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get("CARTRIDGE_CONFIG") or (
            DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
        )
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None

    sections = _sections()
    for section, values in (defaults or {}).items():
        raw.setdefault(section, {}).update(values)
    strings: dict[str, dict[str, Any]] = {}  # values that came as text and may need coercion
    for layer in (_env_overrides(environ), overrides or {}):
        for section, values in layer.items():
            if section not in sections:
                raise ConfigError(f"unknown config section [{section}]")
            for key, value in values.items():
                raw.setdefault(section, {})[key] = value
                strings.setdefault(section, {})[key] = value

    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(
                f"unknown config section [{section}]; expected one of {sorted(sections)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        known = {f.name for f in msgspec.structs.fields(sections[section])}
        for key in values:
            if key not in known:
                raise ConfigError(f"[{section}] has no key {key!r}; known keys: {sorted(known)}")

    built = {}
    for section, values in raw.items():
        typ = sections[section]
        for key, value in strings.get(section, {}).items():
            values[key] = _from_text(typ, key, value)
        try:
            # strict=False lets "200" from the environment become 200, "true" become True.
            built[section] = msgspec.convert(values, typ, strict=not strings.get(section))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"[{section}] {_describe(exc, typ)}") from None
    try:
        config = Config(**built)
    except ValueError as exc:  # a rule across sections (`Config.__post_init__`)
        raise ConfigError(str(exc)) from None
    from shared.games import GAMES  # here, not at import: games need no config

    if config.common.env_id not in GAMES:
        raise ConfigError(f"[common] env_id: unknown game {config.common.env_id!r}; expected one of {sorted(GAMES)}")
    return config


def _from_text(section: type, key: str, value: Any) -> Any:
    """A list-valued key given as text (an environment variable, `--set`) is
    comma-separated: `CARTRIDGE_EVAL_ANCHORS=random,one-ply,alphabeta-4`."""
    field = next(f for f in msgspec.structs.fields(section) if f.name == key)
    if isinstance(value, str) and typing.get_origin(field.type) is tuple:
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _describe(exc: msgspec.ValidationError, section: type) -> str:
    # msgspec says e.g. "Expected `int` >= 1, got `0` - at `$.num_simulations`";
    # put the key first so the message names what is wrong.
    text = str(exc)
    message, sep, where = text.rpartition(" - at `$.")
    if not sep:
        return text
    key = where.rstrip("`")
    hint = typing.get_type_hints(section).get(key)
    if typing.get_origin(hint) is Literal:
        message += f"; expected one of {list(typing.get_args(hint))}"
    return f"{key}: {message}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"
