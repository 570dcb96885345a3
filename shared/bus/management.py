"""Queue depths from RabbitMQ's management API (`broker.management_url`), logged in with
`broker.url`'s user and password: what is waiting for ingest, and what was dead-lettered.
An `https://` API is verified against `broker.ca_file` when set."""

from __future__ import annotations

import base64
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from shared import tls
from shared.config import BrokerConfig
from shared.retry import DependencyError

TIMEOUT_S = 5.0


def api_login(broker: BrokerConfig) -> tuple[str, str, dict[str, str]]:
    """`(API base URL, vhost, Authorization header)` for `broker.url`'s vhost and login."""
    amqp = urlsplit(broker.url)
    vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    login = f"{unquote(amqp.username or 'guest')}:{unquote(amqp.password or 'guest')}"
    return (broker.management_url.rstrip("/"), vhost,
            {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()})


def api_session(broker: BrokerConfig) -> aiohttp.ClientSession:
    """An HTTP session logged in to the management API; an `https://` API verified against
    `broker.ca_file` when set (else aiohttp's default: the system's trust store)."""
    base, _, auth = api_login(broker)
    context = (tls.client_context(broker.ca_file) if base.startswith("https://") else None) or True
    return aiohttp.ClientSession(headers=auth, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                                 connector=aiohttp.TCPConnector(ssl=context))


async def queue_depths(broker: BrokerConfig) -> list[dict]:
    """`[{"name", "ready", "unacked", "consumers"}]` for the transitions and dead-letter
    queues (a queue not declared yet is left out); `DependencyError` naming the API if it
    cannot be asked."""
    base, vhost, _ = api_login(broker)
    out = []
    try:
        async with api_session(broker) as http:
            for name in (broker.transitions_queue, broker.dead_letter_queue):
                async with http.get(f"{base}/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}") as reply:
                    if reply.status == 404:
                        continue
                    if reply.status != 200:
                        raise DependencyError(f"RabbitMQ management API at {base} answered {reply.status} "
                                              f"for queue {name} (broker.management_url, broker.url's login)")
                    q = await reply.json()
                out.append({"name": name, "ready": q.get("messages_ready", 0),
                            "unacked": q.get("messages_unacknowledged", 0), "consumers": q.get("consumers", 0)})
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if (error := tls.certificate_error(exc)) is not None:
            raise DependencyError(tls.untrusted(f"RabbitMQ management API at {base}", error, "broker.ca_file")) from None
        raise DependencyError(f"RabbitMQ management API at {base} is unreachable: {exc or type(exc).__name__}") from None
    return out
