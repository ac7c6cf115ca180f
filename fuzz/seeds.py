#!/usr/bin/env python3
"""Writes the seed corpus, corpus/<target>/seed-*, from realistic messages.

Run from fuzz/: `python3 seeds.py`. The byte format of the inputs is the one of
src/input.rs (Reader/Writer) and, for amqp_wire, src/amqp_wire.rs; the name and value tables
below must match theirs (index = position in the table).
"""

import base64
import json
import os
import struct

HEADER_NAMES = [
    "content-type", "Content-Type", "ce_type", "ce_id", "ce_source", "ce_time",
    "ce_specversion", "cloudEvents_type", "cloudEvents:type", "cloudEvents_id", "CE_TYPE",
    "Micro-ID", "Micro-Topic", "__value_schema_id", "correlation-id", "traceparent", "tenant",
]
AMQP_NAMES = [
    "cloudEvents_type", "cloudEvents_id", "cloudEvents_source", "cloudEvents_time",
    "cloudEvents_specversion", "cloudEvents:type", "cloudEvents:id", "ce_type", "ce_id",
    "ce-type", "ce-id", "CE_TYPE", "CloudEvents_ID", "ce_", "cloudEvents_", "Content-Type",
    "content-type", "Micro-ID", "Micro-Topic", "x-event-key", "x-delivery-count", "x-death",
    "correlation-id", "traceparent", "tenant",
]
TOPICS = ["users.created", "orders.placed", "users.created.dlq", ""]
VALUES = [
    b"application/protobuf", b"application/json", b"application/json; charset=utf-8",
    b"application/x-protobuf", b"application/octet-stream", b"application/grpc",
    b"application/grpc+proto", b"application/cloudevents+json",
    b"application/cloudevents+protobuf; charset=utf-8", b"application/cloudevents",
    b"text/plain", b"users.v1.UserCreated", b"shop.v1.OrderPlaced", b"bench.v1.Tick",
    b"Users.V1.UserCreated", b"0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11", b"users.created",
    b"2026-08-20T12:34:56.789Z", b"1.0",
    b"\x01\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff\x00",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"",
]

ID = b"0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11"


# ---- protobuf, by hand ------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number, value):
    return varint(number << 3) + varint(value & 0xFFFFFFFFFFFFFFFF)


def user_created(user_id=b"u-1", email=b"ada@example.com", display_name=b"Ada"):
    return field_bytes(1, user_id) + field_bytes(2, email) + field_bytes(3, display_name)


def order_placed():
    item = field_bytes(1, b"sku-1") + field_varint(2, 2) + field_varint(3, 120)
    return (field_bytes(1, b"o-1") + field_bytes(2, b"u-1") + field_bytes(3, item)
            + field_varint(4, 240))


# ---- the input format (src/input.rs) ------------------------------------------------------

def blob(data):
    if len(data) < 255:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack("<H", len(data)) + data


def name(table, text):
    if text in table:
        return bytes([table.index(text)])
    return b"\xff" + blob(text.encode())


def value(data):
    if data in VALUES:
        return bytes([VALUES.index(data)])
    return b"\xff" + blob(data)


def headers(pairs):
    out = bytes([len(pairs)])
    for n, v in pairs:
        out += name(HEADER_NAMES, n) + value(v)
    return out


# ---- amqp_wire (src/amqp_wire.rs) ---------------------------------------------------------

def long_string(data):
    return bytes([18]) + value(data)


def long_long_int(n):
    return bytes([7]) + struct.pack("<q", n)


def amqp_table(entries):
    out = bytes([len(entries)])
    for key, encoded in entries:
        out += name(AMQP_NAMES, key) + encoded
    return out


def nested_table(entries):
    return bytes([14]) + amqp_table(entries)


def field_array(encoded_values):
    return bytes([12, len(encoded_values)]) + b"".join(encoded_values)


def amqp(routing_key, redelivered, props, table, payload):
    """props: dict of content_type, message_id, type, app_id, timestamp, correlation_id."""
    flags = 0
    out = b""
    for bit, key in [(0x01, "content_type"), (0x02, "message_id"), (0x04, "type"),
                     (0x08, "app_id")]:
        if key in props:
            flags |= bit
            out += value(props[key])
    if "timestamp" in props:
        flags |= 0x10
        out += struct.pack("<Q", props["timestamp"])
    if "correlation_id" in props:
        flags |= 0x20
        out += value(props["correlation_id"])
    flags |= 0x40  # delivery mode 2
    if table is not None:
        flags |= 0x80
        out += amqp_table(table)
    return name(TOPICS, routing_key) + bytes([1 if redelivered else 0, flags]) + out + payload


# ---- the seeds ----------------------------------------------------------------------------

def payload_seeds():
    """(name, headers, payload) of realistic messages, for classify and decode."""
    user = user_created()
    envelope = json.dumps({
        "Header": {"Content-Type": "application/protobuf", "Micro-Topic": "users.created",
                   "Micro-ID": ID.decode()},
        "Body": base64.b64encode(user).decode(),
    }).encode()
    cloudevent = json.dumps({
        "specversion": "1.0", "type": "users.v1.UserCreated", "source": "signup",
        "id": ID.decode(), "datacontenttype": "application/json",
        "data": {"userId": "u-1", "email": "ada@example.com"},
    }).encode()
    typed = [("content-type", b"application/protobuf"), ("ce_type", b"users.v1.UserCreated"),
             ("ce_id", ID), ("ce_source", b"signup"), ("ce_specversion", b"1.0")]
    return [
        ("protobuf-user-created", typed, user),
        ("protobuf-untyped", [], user),
        ("protobuf-order-placed", [("ce_type", b"shop.v1.OrderPlaced")], order_placed()),
        ("json-user-created", [("content-type", b"application/json"),
                               ("ce_type", b"users.v1.UserCreated")],
         b'{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}'),
        ("json-order-placed", [("content-type", b"application/json; charset=utf-8")],
         b'{"orderId":"o-1","userId":"u-1","items":[{"sku":"sku-1","quantity":2,'
         b'"unitPriceCents":"120"}],"totalCents":"240"}'),
        ("json-unknown-keys", [("content-type", b"application/json")],
         b'{"user_id":"u-1","referralCode":"x","nested":{"a":[1,2,{"b":null}]}}'),
        ("json-untyped-as-protobuf", [], b'{"userId":"u-1"}'),
        ("go-micro-envelope", [], envelope),
        ("go-micro-headers", [("Content-Type", b"application/protobuf"), ("Micro-ID", ID),
                              ("Micro-Topic", b"users.created")], user),
        ("confluent-frame", [], b"\x00\x00\x00\x00\x01\x00" + user),
        ("confluent-frame-indexes", [], b"\x00\x00\x00\x00\x2a\x04\x02\x00" + user),
        ("confluent-header-mode", [("__value_schema_id", VALUES[19])], user),
        ("grpc-frame", [("content-type", b"application/grpc")],
         b"\x00" + struct.pack(">I", len(user)) + user),
        ("gzip", [], b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\x00" * 10),
        ("text", [("content-type", b"text/plain")], b"user u-1 signed up\r\n\tat 12:00"),
        ("cloudevents-structured", [("content-type", b"application/cloudevents+json")],
         cloudevent),
        ("empty-typed", [("ce_type", b"users.v1.UserCreated")], b""),
        ("type-mismatch", [("ce_type", b"shop.v1.OrderPlaced"),
                           ("content-type", b"application/protobuf")], user),
        ("amqp-type-header", [("cloudEvents_type", b"users.v1.UserCreated"),
                              ("cloudEvents_id", ID)], user),
        ("binary", [], b"\xff\xfe\x00\x07\x80\x80\x80"),
    ]


def amqp_seeds():
    user = user_created()
    own = [  # what wire::to_amqp writes for a typed message
        ("cloudEvents_type", long_string(b"users.v1.UserCreated")),
        ("cloudEvents_id", long_string(ID)),
        ("cloudEvents_source", long_string(b"signup")),
        ("cloudEvents_time", long_string(b"2026-08-20T12:34:56.789Z")),
        ("cloudEvents_specversion", long_string(b"1.0")),
        ("Content-Type", long_string(b"application/protobuf")),
        ("Micro-ID", long_string(ID)),
        ("Micro-Topic", long_string(b"users.created")),
    ]
    own_props = {"content_type": b"application/protobuf", "message_id": ID,
                 "type": b"users.v1.UserCreated", "app_id": b"signup",
                 "timestamp": 1_787_229_296}
    x_death = field_array([nested_table([
        ("tenant", long_string(b"users.created")),
        ("x-delivery-count", long_long_int(3)),
        ("ce_", bytes([0, 1])),  # a bool
        ("traceparent", bytes([13]) + struct.pack("<Q", 1_787_229_296)),  # a timestamp
    ])])
    return [
        ("own-message", amqp("users.created", False, own_props, own, user)),
        ("go-micro", amqp("users.created", False, {}, [
            ("Content-Type", long_string(b"application/protobuf")),
            ("Micro-ID", long_string(ID)),
            ("Micro-Topic", long_string(b"users.created")),
        ], user)),
        ("cloudevents-forms", amqp("users.created", False, {"message_id": b"client-made-id",
                                                            "type": b"com.example.Class"}, [
            ("ce-type", long_string(b"users.v1.UserCreated")),
            ("cloudEvents:id", long_string(ID)),
            ("CE_TYPE", long_string(b"users.v1.UserCreated")),
            ("ce-id", long_string(b"another-id")),
        ], user)),
        ("properties-only", amqp("orders.placed", True, {
            "content_type": b"application/json", "message_id": ID,
            "type": b"shop.v1.OrderPlaced", "app_id": b"orders",
            "timestamp": 253_402_300_800, "correlation_id": ID,
        }, None, b'{"orderId":"o-1"}')),
        ("quorum-redelivery", amqp("users.created", True, {}, [
            ("x-delivery-count", long_long_int(4)),
            ("x-death", x_death),
            ("x-event-key", long_string(b"u-1")),
            ("correlation-id", long_string(ID)),
        ], user)),
        ("long-values", amqp("users.created", False, {}, [
            ("cloudEvents_type", bytes([17, 200]) + value(b"users.v1.UserCreated")),
            ("traceparent", long_string(b"x" * 1000)),
            ("cloudEvents_id", bytes([15]) + blob(b"\x00\xff\xfe")),  # a byte array
            ("tenant", bytes([10, 3]) + struct.pack("<I", 12345)),  # a decimal
        ], user)),
    ]


def resp(*args):
    """A request as clients send it: an array of bulk strings."""
    out = b"*%d\r\n" % len(args)
    for arg in args:
        arg = arg if isinstance(arg, bytes) else arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


def gateway_seeds():
    """Client sides of event-gateway connections; 0xFF splits an input into separate writes."""
    return [
        ("connection", resp("PING") + resp("ECHO", "hi") + b"PING\r\n"),
        ("pubsub-resp3", resp("HELLO", "3") + resp("SUBSCRIBE", "news")
         + resp("PUBLISH", "news", "hi") + resp("UNSUBSCRIBE")),
        ("streams", b"XGROUP CREATE jobs g $\r\n"
         b"XADD jobs * payload one tenant acme\r\n"
         b"XADD jobs MAXLEN ~ 10 * payload two\r\n"
         b"XREADGROUP GROUP g c COUNT 5 STREAMS jobs >\r\n"
         b"XPENDING jobs g\r\nXPENDING jobs g - + 10 c\r\n"
         b"XREADGROUP GROUP g c STREAMS jobs 0\r\nXACK jobs g 0-1 1-0\r\n"
         b"XREADGROUP GROUP g c BLOCK 0 STREAMS jobs >\r\n"),
        ("typed", b"PUBLISH users hello\r\n"
         + resp("XADD", "users", "*", "payload", user_created(), "tenant", "acme")
         + resp("XADD", "users", "*", "payload", '{"userId":"u"}', "content-type", "application/json")
         + b"XADD users * payload x ce_type shop.v1.OrderPlaced\r\n"),
        ("cut-and-too-large", b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nt\r\n$9\xff9999\r\n"),
        ("split-quit", b"*1\r\n$4\r\nPI\xffNG\r\n*1\xff\r\n$4\r\nQUIT\r\nPING\r\n"),
    ]


# ---- nats_headers (src/nats_headers.rs): a header block as it is --------------------------

def nats_header_seeds():
    typed = (b"ce_specversion: 1.0\r\nce_type: users.v1.UserCreated\r\nce_id: " + ID
             + b"\r\ncontent-type: application/protobuf\r\n")
    return [
        ("typed", b"NATS/1.0\r\n" + typed + b"\r\n"),
        ("name-not-ascii", b"NATS/1.0\r\n" + typed + b"\xff\xfename: v\r\ntenant: t-1\r\n\r\n"),
        ("no-colon", b"NATS/1.0\r\nno colon here\r\nce_type: users.v1.UserCreated\r\n\r\n"),
        ("value-not-utf8", b"NATS/1.0\r\nbad-value: \xc3\r\n\tfolded\r\n\r\n"),
        ("folded", b"NATS/1.0\r\nfolded: one\r\n two\r\n\tthree\r\n\r\n"),
        ("escaped-and-key", b"NATS/1.0\r\nx-event-escaped: x-event-key\r\nx-event-key: %00k\r\n"
         b"Nats-Msg-Id: " + ID + b"\r\n\r\n"),
        ("status", b"NATS/1.0 503\r\n\r\n"),
        ("ours-named", b"NATS/1.0\r\nx-nats-unreadable-headers: given\r\n\x80: v\r\n\r\n"),
        # found by the fuzzer: the producer's own header of that name, in another case
        ("ours-named-other-case", b"NATS/1.0\r\nx-nats-unreadAble-headers: \r\nS/1.0\r\n\r\n"),
    ]


def write(target, seed, data):
    directory = os.path.join("corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + seed), "wb") as f:
        f.write(data)


def main():
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    for seed, pairs, payload in payload_seeds():
        write("classify", seed, headers(pairs) + payload)
        for selector in range(2):  # the diagnosis expects UserCreated, then OrderPlaced
            position = bytes([1]) + struct.pack("<Q", 42)
            write("decode", f"{seed}-{selector}", bytes([selector]) + position
                  + headers(pairs) + payload)
    for seed, data in amqp_seeds():
        write("amqp_wire", seed, data)
    for seed, data in gateway_seeds():
        write("gateway", seed, data)
    for seed, data in nats_header_seeds():
        write("nats_headers", seed, data)


if __name__ == "__main__":
    main()
