"""`cartridge provision`: a deployment's least-privilege logins, and its broker topology.

Run once by an admin before the services start, and again at will (idempotent): compose's
`provision` service and the Kubernetes Job `provision` run it.
- RabbitMQ, logged in as `broker.url` (an administrator): declares every exchange and
  queue (the services then run with `broker.declare = false` and only check them), and
  a user per service with the rights `deploy/rabbitmq/users.toml` gives it, through the
  management API (`broker.management_url`).
- PostgreSQL, as `storage.postgres_url` (the database's owner or a superuser): the
  database if missing, a login role per service that uses it, then the grants of
  `deploy/postgres/roles.sql`.
MinIO's users and policies (`deploy/minio/`) are made with `mc` (compose's `minio-init`,
Kubernetes' Job `minio-logins`).

Every login is `cartridge_<service>` (`--prefix` changes `cartridge_`); its password is
`<SERVICE>_PASSWORD` from the environment (the same for its broker user and its database
role), never a file.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Mapping
from urllib.parse import quote

import aiohttp
import asyncpg
import msgspec

from shared.bus.management import api_login, api_session
from shared.config import BrokerConfig, Config, StorageConfig, mask_url
from shared.retry import DependencyError
from shared.service import base_parser, load_command_config, setup_logging


def definition(relative: str) -> Path:
    """A definition file under `deploy/`: the working directory's (the image's /app) or,
    failing that, this source checkout's."""
    here = Path("deploy") / relative
    return here if here.exists() else Path(__file__).resolve().parents[1] / "deploy" / relative


USERS_FILE = definition("rabbitmq/users.toml")
ROLES_FILE = definition("postgres/roles.sql")
DATABASE_SERVICES = ("ingest", "trainer", "evaluator", "web")  # actors and the operator have no role
PREFIX = "cartridge_"
# The `broker.<name>` settings a users file may refer to as `{name}`.
BROKER_NAMES = ("transitions_queue", "dead_letter_exchange", "dead_letter_queue", "models_exchange",
                "evaluator_queue", "heartbeats")


def login(service: str, prefix: str = PREFIX) -> str:
    return f"{prefix}{service}"


def password_of(service: str, environ: Mapping[str, str]) -> str:
    variable = f"{service.upper()}_PASSWORD"
    if not environ.get(variable):
        raise DependencyError(f"{variable} is not set: the password of the {service}'s login")
    return environ[variable]


# -- RabbitMQ --------------------------------------------------------------------------

def broker_rights(broker: BrokerConfig, path: Path = USERS_FILE) -> dict[str, dict]:
    """`{service: {"configure", "write", "read", "tags"}}` from the users file, `{name}`
    filled in with `broker.<name>` escaped for a regex."""
    names = {field: re.escape(getattr(broker, field)) for field in BROKER_NAMES}
    rights = {}
    for service, spec in tomllib.loads(path.read_text()).items():
        rights[service] = {k: spec[k].format(**names) for k in ("configure", "write", "read")}
        rights[service]["tags"] = list(spec.get("tags", []))
    return rights


async def declare_broker_topology(broker: BrokerConfig) -> None:
    """Every exchange and queue the services use, declared as the admin."""
    from shared.bus.rabbitmq import bind_event_queue, connect, declare_topology
    from shared.heartbeat import declare as declare_heartbeats

    full = msgspec.structs.replace(broker, declare=True)
    connection = await connect(full, name="cartridge provision")
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, full)
        await bind_event_queue(channel, full, durable_queue=full.evaluator_queue)
        await declare_heartbeats(channel, full)


async def provision_broker_users(broker: BrokerConfig, passwords: Mapping[str, str], *, prefix: str = PREFIX,
                                 path: Path = USERS_FILE) -> list[str]:
    """Create or update one user per service of the users file, with its rights on
    `broker.url`'s vhost; the users made."""
    base, vhost, _ = api_login(broker)
    made = []
    async with api_session(broker) as http:
        async def put(path_: str, body: dict) -> None:
            async with http.put(f"{base}/api/{path_}", json=body) as reply:
                if reply.status not in (201, 204):
                    raise DependencyError(f"RabbitMQ management API at {base} answered {reply.status} to PUT "
                                          f"{path_}: {(await reply.text())[:200]} (is broker.url an administrator?)")

        for service, rights in broker_rights(broker, path).items():
            user = login(service, prefix)
            await put(f"users/{quote(user, safe='')}",
                      {"password": passwords[service], "tags": ",".join(rights["tags"])})
            await put(f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                      {k: rights[k] for k in ("configure", "write", "read")})
            made.append(user)
    return made


# -- PostgreSQL ------------------------------------------------------------------------

def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def provision_postgres_roles(storage: StorageConfig, passwords: Mapping[str, str], *, prefix: str = PREFIX,
                                   path: Path = ROLES_FILE) -> list[str]:
    """Create (or set the password of) a login role per database service, then apply
    the roles file to `storage.postgres_url`'s database; the roles."""
    from shared.games import get_game
    from shared.replay.postgres import PostgresReplay

    await PostgresReplay(storage, get_game("tictactoe"))._create_database()  # if missing: no service may create it
    conn = await asyncpg.connect(storage.postgres_url)
    try:
        roles = {service: login(service, prefix) for service in DATABASE_SERVICES}
        async with conn.transaction():
            for service, role in roles.items():
                if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                    await conn.execute(f"CREATE ROLE {quote_ident(role)} LOGIN")
                # A password cannot be a query parameter in DDL: format() quotes it as a literal.
                alter = await conn.fetchval("SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                                            role, passwords[service])
                await conn.execute(alter)
            database = await conn.fetchval("SELECT current_database()")
            names = {service: quote_ident(role) for service, role in roles.items()}
            await conn.execute(path.read_text().format(database=quote_ident(database), **names))
        return list(roles.values())
    finally:
        await conn.close()


# -- the command -----------------------------------------------------------------------

async def provision(config: Config, environ: Mapping[str, str], *, broker: bool = True, postgres: bool = True,
                    prefix: str = PREFIX) -> None:
    services = (set(broker_rights(config.broker)) if broker else set()) | (set(DATABASE_SERVICES) if postgres else set())
    passwords = {s: password_of(s, environ) for s in sorted(services)}  # all missing ones fail before any change
    if broker:
        await declare_broker_topology(config.broker)
        try:
            users = await provision_broker_users(config.broker, passwords, prefix=prefix)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DependencyError(f"RabbitMQ management API at {config.broker.management_url}: "
                                  f"{exc or type(exc).__name__}") from None
        print(f"RabbitMQ {mask_url(config.broker.url)}: topology declared; users {', '.join(users)}")
    if postgres:
        try:
            roles = await provision_postgres_roles(config.storage, passwords, prefix=prefix)
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyError(f"PostgreSQL at {mask_url(config.storage.postgres_url)}: {exc}") from None
        print(f"PostgreSQL {mask_url(config.storage.postgres_url)}: roles {', '.join(roles)}")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge provision", __doc__.splitlines()[0])
    parser.add_argument("--only", choices=["broker", "postgres"], help="provision only this server")
    parser.add_argument("--prefix", default=PREFIX, help=f"logins are <prefix><service> (default {PREFIX})")
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    setup_logging(config.common.log_level)
    try:
        asyncio.run(provision(config, os.environ, broker=args.only != "postgres", postgres=args.only != "broker",
                              prefix=args.prefix))
    except DependencyError as exc:
        print(f"cartridge provision: {exc}", file=sys.stderr)
        return 1
    return 0
