package main

// RabbitMQ through go-micro v5 and its built-in broker: exchange `micro` (topic, not durable:
// go-micro's defaults), routing key = topic, the header map in the AMQP header table.

import (
	"context"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	micro "go-micro.dev/v5"
	"go-micro.dev/v5/broker"
	"go-micro.dev/v5/broker/rabbitmq"
	"go-micro.dev/v5/client"
	"go-micro.dev/v5/logger"
	"go-micro.dev/v5/metadata"
	"go-micro.dev/v5/registry"

	"event-interop/go-micro-peer/internal/peer"
)

func init() {
	logger.DefaultLogger = logger.NewLogger(logger.WithOutput(os.Stderr))
}

func rabbitAddress(o peer.Options) string {
	if o.Address != "" {
		return o.Address
	}
	return peer.RabbitURL
}

func publishRabbitMQ(o peer.Options) error {
	// publisher confirms, so that every message is in RabbitMQ before the peer exits (the
	// messages themselves are what go-micro publishes by default)
	b := rabbitmq.NewBroker(broker.Addrs(rabbitAddress(o)), rabbitmq.ConfirmPublish())
	if err := b.Init(); err != nil {
		return err
	}
	if err := b.Connect(); err != nil {
		return fmt.Errorf("connect to RabbitMQ at %s: %w", rabbitAddress(o), err)
	}
	defer b.Disconnect()
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
		peer.Emit(current)
	}
	return nil
}

type recordingBroker struct {
	broker.Broker
	onPublish func(topic string, header map[string]string)
}

func (r *recordingBroker) Publish(topic string, m *broker.Message, opts ...broker.PublishOption) error {
	if err := r.Broker.Publish(topic, m, opts...); err != nil {
		return err
	}
	r.onPublish(topic, peer.RecordingHeader(m.Header))
	return nil
}

func subscribeRabbitMQ(o peer.Options) error {
	b := rabbitmq.NewBroker(broker.Addrs(rabbitAddress(o)))
	received := peer.NewCounter(o.Count)
	srv, err := startSubscriber(o, b, received)
	if err != nil {
		return err
	}
	defer srv.Stop()
	// go-micro declares, binds and consumes the queue in the background: ready once
	// RabbitMQ reports a consumer on it
	if err := awaitConsumer(rabbitAddress(o), o.Queue, 30*time.Second); err != nil {
		return err
	}
	peer.Emit(peer.Ready(o))
	return received.Wait(o.Timeout)
}

// Waits until `queue` exists with at least one consumer.
func awaitConsumer(url, queue string, timeout time.Duration) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(timeout)
	for {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		q, err := ch.QueueDeclarePassive(queue, false, true, false, false, nil)
		if err == nil {
			ch.Close()
			if q.Consumers > 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no consumer on queue %s after %s (last error: %v)", queue, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
