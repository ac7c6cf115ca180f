package main

// NATS through go-micro v5 and its built-in broker (`broker/nats`): core NATS, subject =
// topic, the message as go-micro's JSON envelope (`{"Header":{…},"Body":"<base64>"}`) in the
// payload, no NATS headers; a queue is a NATS queue group (QueueSubscribe).

import (
	"context"
	"fmt"
	"time"

	natsp "github.com/nats-io/nats.go"
	micro "go-micro.dev/v5"
	"go-micro.dev/v5/broker"
	gonats "go-micro.dev/v5/broker/nats"
	"go-micro.dev/v5/client"
	"go-micro.dev/v5/metadata"
	"go-micro.dev/v5/registry"

	"event-interop/go-micro-peer/internal/peer"
)

// How long the peer waits for the server's round trips.
const natsWait = 30 * time.Second

func natsAddress(o peer.Options) string {
	if o.Address != "" {
		return o.Address
	}
	return peer.NatsURL()
}

// go-micro's NATS broker for `o`, and its connection once it has connected: go-micro keeps
// the connection to itself; the connected callback of the nats.go options it is given
// hands it over, for the peer's round trips (Flush: PING/PONG through the same connection).
func natsBroker(o peer.Options) (broker.Broker, <-chan *natsp.Conn) {
	conns := make(chan *natsp.Conn, 1)
	options := natsp.GetDefaultOptions()
	options.Name = "go-micro-peer " + o.Command
	options.ConnectedCB = func(c *natsp.Conn) {
		select {
		case conns <- c:
		default:
		}
	}
	b := gonats.NewNatsBroker(broker.Addrs(natsAddress(o)), gonats.Options(options))
	return b, conns
}

// The connection `conns` hands over, once.
func natsConn(conns <-chan *natsp.Conn) (*natsp.Conn, error) {
	select {
	case c := <-conns:
		return c, nil
	case <-time.After(natsWait):
		return nil, fmt.Errorf("go-micro's NATS connection did not report connected in %s", natsWait)
	}
}

func publishNATS(o peer.Options) error {
	b, conns := natsBroker(o)
	if err := b.Init(); err != nil {
		return err
	}
	if err := b.Connect(); err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", natsAddress(o), err)
	}
	defer b.Disconnect()
	conn, err := natsConn(conns)
	if err != nil {
		return err
	}
	var current map[string]any
	recorder := &recordingBroker{Broker: b}
	clientOptions := []client.Option{client.Broker(recorder), client.Registry(registry.NewMemoryRegistry()), tracedClient()}
	if o.ContentType != "" {
		clientOptions = append(clientOptions, client.ContentType(o.ContentType))
	}
	c := client.NewClient(clientOptions...)
	event := micro.NewEvent(o.Topic, c)
	for i := 0; i < o.Count; i++ {
		m, err := peer.Message(o, i)
		if err != nil {
			return err
		}
		ctx := metadata.NewContext(context.Background(), metadata.Metadata(o.Meta))
		recorder.onPublish = func(topic string, header map[string]string) {
			current = peer.Published(topic, m, header)
		}
		if err := event.Publish(ctx, m); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
		// core NATS has no acknowledgement: a round trip after the publish, so that the
		// server has the message before the line says so (and before the peer exits)
		if err := conn.FlushTimeout(natsWait); err != nil {
			return fmt.Errorf("flush after publish %d: %w", i, err)
		}
		peer.Emit(current)
	}
	return nil
}

// Tells when go-micro's server subscribed to `topic` through it.
type subscribingBroker struct {
	broker.Broker
	topic      string
	subscribed chan struct{}
}

func (s *subscribingBroker) Subscribe(topic string, h broker.Handler, opts ...broker.SubscribeOption) (broker.Subscriber, error) {
	sub, err := s.Broker.Subscribe(topic, h, opts...)
	if err == nil && topic == s.topic {
		close(s.subscribed)
	}
	return sub, err
}

func subscribeNATS(o peer.Options) error {
	b, conns := natsBroker(o)
	sb := &subscribingBroker{Broker: b, topic: o.Topic, subscribed: make(chan struct{})}
	received := peer.NewCounter(o.Count)
	srv, err := startSubscriber(o, sb, received)
	if err != nil {
		return err
	}
	defer srv.Stop()
	select {
	case <-sb.subscribed:
	case <-time.After(natsWait):
		return fmt.Errorf("go-micro did not subscribe to %s in %s", o.Topic, natsWait)
	}
	conn, err := natsConn(conns)
	if err != nil {
		return err
	}
	// the SUB went out on this connection before the PING: at the PONG the server has the
	// subscription
	if err := conn.FlushTimeout(natsWait); err != nil {
		return fmt.Errorf("flush after subscribe: %w", err)
	}
	peer.Emit(peer.Ready(o))
	return received.Wait(o.Timeout)
}
