package main

// The subscribing side both v5 brokers share: go-micro's server with the tracing wrapper, and
// a handler that reports each UserCreated it gets (fields, metadata, Micro-ID, trace id).

import (
	"context"

	micro "go-micro.dev/v5"
	"go-micro.dev/v5/broker"
	"go-micro.dev/v5/metadata"
	"go-micro.dev/v5/registry"
	"go-micro.dev/v5/server"

	"event-interop/go-micro-peer/internal/peer"
	"event-interop/go-micro-peer/pb/usersv1"
)

// startSubscriber starts go-micro's server on b, subscribed to o.Topic in the queue o.Queue;
// each message it handles is reported and counted in received.
func startSubscriber(o peer.Options, b broker.Broker, received *peer.Counter) (server.Server, error) {
	srv := server.NewServer(
		server.Name("go-micro-peer"),
		server.Address("127.0.0.1:0"),
		server.Broker(b),
		server.Registry(registry.NewMemoryRegistry()),
		tracedSubscriber(),
	)
	handler := func(ctx context.Context, user *usersv1.UserCreated) error {
		md, _ := metadata.FromContext(ctx)
		line := peer.Received(peer.Lookup(md, "Micro-Topic"), user, md, peer.Lookup(md, "Micro-ID"))
		line["trace_id"] = traceID(ctx)
		peer.Emit(line)
		received.Add()
		return nil
	}
	if err := micro.RegisterSubscriber(o.Topic, srv, handler, server.SubscriberQueue(o.Queue)); err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	return srv, nil
}
