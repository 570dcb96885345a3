"""What a benchmark creates on the real servers, deleted afterwards: its queues and
exchanges on RabbitMQ and its database on PostgreSQL."""

from __future__ import annotations

import aio_pika
import asyncpg


async def delete_scratch(amqp_url: str, queues: list[str], exchanges: list[str], postgres_url: str,
                         database: str) -> None:
    """`postgres_url` without a database name: the admin connection goes to `postgres`."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    admin = await asyncpg.connect(f"{postgres_url}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()
