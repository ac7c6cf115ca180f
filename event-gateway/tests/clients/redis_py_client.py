"""The redis-py side of the gateway tests: one command per run, one JSON line per result.

usage: python redis_py_client.py <port> <protocol 2|3> <command> args...
  subscribe <channel> <count>            prints {"subscribed": ch}, then each message
  publish <channel> <payload>...         prints {"receivers": n} per payload
  xgroup <stream> <group> <start>        prints {"created": true|false}
  xadd <stream> <count> <prefix>         prints {"id": ..} per message (payload <prefix><i>)
  xadd-hex <stream> <hex> [field=value ...]
                                         one message of the bytes <hex>, with those fields
  publish-hex <channel> <hex>            PUBLISH of the bytes <hex>; prints {"receivers": n}
                                         or {"error": text}
  xconsume <stream> <group> <consumer> <count> [--no-ack]
                                         prints {"id", "fields"} per message, acks unless --no-ack;
                                         with --hex the payload field is hex
  xpending <stream> <group>              prints {"count": n, "consumers": {name: n}}
  read-reset <stream> <group>            consumer "a" reads one message and sends RESET on its
                                         connection; consumer "b", on another, reads; then "a"
                                         acknowledges: prints {"a": id, "b": [ids], "acked": n}
"""

import json
import sys

import redis


def out(obj):
    print(json.dumps(obj), flush=True)


def text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entries_of(reply):
    """The (id, fields) pairs of an XREADGROUP reply, in RESP2 (a list) or RESP3 (a dict) form."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    found = []
    for _, entries in streams:
        # RESP3 wraps a stream's entries in one more list
        if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], (list, tuple)):
            entries = entries[0]
        found.extend(entries)
    return found


def main():
    port, protocol, command, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
    if command == "subscribe":
        channel, left = args[0], int(args[1])
        pubsub = r.pubsub()
        pubsub.subscribe(channel)
        while left > 0:
            message = pubsub.get_message(timeout=30)
            if message is None:
                continue
            if message["type"] == "subscribe":
                out({"subscribed": text(message["channel"])})
            elif message["type"] == "message":
                out({"channel": text(message["channel"]), "payload": text(message["data"])})
                left -= 1
    elif command == "publish":
        for payload in args[1:]:
            out({"receivers": r.publish(args[0], payload)})
    elif command == "xgroup":
        try:
            r.xgroup_create(args[0], args[1], id=args[2], mkstream=True)
            out({"created": True})
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
            out({"created": False})
    elif command == "xadd":
        stream, count, prefix = args[0], int(args[1]), args[2]
        for i in range(count):
            out({"id": text(r.xadd(stream, {"payload": f"{prefix}{i}"}))})
    elif command == "xadd-hex":
        fields = {"payload": bytes.fromhex(args[1])}
        for pair in args[2:]:
            name, value = pair.split("=", 1)
            fields[name] = value
        try:
            out({"id": text(r.xadd(args[0], fields))})
        except redis.ResponseError as error:
            out({"error": str(error)})
    elif command == "publish-hex":
        try:
            out({"receivers": r.publish(args[0], bytes.fromhex(args[1]))})
        except redis.ResponseError as error:
            out({"error": str(error)})
    elif command == "xconsume":
        stream, group, consumer, count = args[0], args[1], args[2], int(args[3])
        ack = "--no-ack" not in args
        hex_payload = "--hex" in args
        got = 0
        while got < count:
            reply = r.xreadgroup(group, consumer, {stream: ">"}, count=min(10, count - got), block=2000)
            for entry_id, fields in entries_of(reply):
                fields = {text(k): (v.hex() if hex_payload and k == b"payload" else text(v)) for k, v in fields.items()}
                out({"id": text(entry_id), "fields": fields})
                got += 1
                if ack:
                    r.xack(stream, group, entry_id)
    elif command == "xpending":
        summary = r.xpending(args[0], args[1])
        out({
            "count": summary["pending"],
            "consumers": {text(c["name"]): int(c["pending"]) for c in summary["consumers"]},
        })
    elif command == "read-reset":
        stream, group = args[0], args[1]
        # one connection each, kept for the whole run
        a = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, single_connection_client=True)
        b = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, single_connection_client=True)
        read = entries_of(a.xreadgroup(group, "a", {stream: ">"}, count=1, block=5000))
        a.execute_command("RESET")
        others = entries_of(b.xreadgroup(group, "b", {stream: ">"}, count=10))
        acked = a.xack(stream, group, read[0][0])
        out({"a": text(read[0][0]), "b": [text(i) for i, _ in others], "acked": acked})
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
