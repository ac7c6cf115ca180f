#!/usr/bin/env python3
"""Asks a broker whether it really serves, with the broker's own protocol.

    probe.py kafka 127.0.0.1:9092    a metadata request (the broker lists itself)
    probe.py amqp amqp://guest:guest@127.0.0.1:5672/%2f    an AMQP handshake and a channel
    probe.py nats nats://127.0.0.1:4222    CONNECT, PING/PONG, then JetStream's account info
    probe.py redis 127.0.0.1:6379    PING

Exit status 0 when it serves, 1 with the reason on stderr when not. Used by scripts/brokers.sh.
"""

import asyncio
import logging
import sys


def kafka(address: str) -> str:
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    admin = AdminClient({"bootstrap.servers": address, "logger": quiet})
    metadata = admin.list_topics(timeout=3)
    if not metadata.brokers:
        raise RuntimeError("the metadata response lists no broker")
    return f"cluster {metadata.cluster_id}, {len(metadata.brokers)} broker(s)"


def amqp(url: str) -> str:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=3"))
    try:
        connection.channel().close()
        props = connection._impl.server_properties
        version = props.get("version", b"?")
        return "RabbitMQ " + (version.decode() if isinstance(version, bytes) else str(version))
    finally:
        connection.close()


def nats(url: str) -> str:
    import socket
    from urllib.parse import urlparse

    import nats as nats_client

    # a refused connection fails here at once (the client would retry it until its timeout)
    parsed = urlparse(url)
    socket.create_connection((parsed.hostname, parsed.port or 4222), timeout=3).close()

    async def quiet(_error: Exception) -> None:
        pass  # the outcome is reported once, below

    async def ask() -> str:
        nc = await nats_client.connect(
            url,
            connect_timeout=3,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            error_cb=quiet,
        )
        try:
            await nc.flush(timeout=3)  # PING, wait for PONG
            info = await nc.jetstream().account_info()
            return f"nats-server {nc._server_info.get('version', '?')}, JetStream streams={info.streams}"
        finally:
            await nc.close()

    return asyncio.run(asyncio.wait_for(ask(), timeout=5))


def redis(address: str) -> str:
    import redis as redis_client

    host, _, port = address.rpartition(":")
    client = redis_client.Redis(host=host, port=int(port), socket_timeout=3, socket_connect_timeout=3)
    if not client.ping():
        raise RuntimeError("PING was not answered with PONG")
    return "Redis " + client.info("server")["redis_version"]


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("kafka", "amqp", "nats", "redis"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, address = sys.argv[1], sys.argv[2]
    try:
        print(globals()[kind](address))
        return 0
    except Exception as error:  # the reason is the answer
        print(f"{kind} at {address} does not serve: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
