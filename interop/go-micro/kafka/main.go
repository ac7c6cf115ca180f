// Command go-micro-peer-kafka is go-micro-peer's Kafka side (go-micro-peer runs it for
// `--broker kafka`; the command line and output are go-micro-peer's): Kafka through go-micro v4 and its Kafka broker plugin (github.com/go-micro/plugins/v4/
// broker/kafka, sarama): the whole broker.Message as a JSON envelope in the record value.
//
// Two settings differ from the plugin's defaults, both sarama configuration the plugin takes
// as options: the protocol version (the plugin's default, 0.10.2, speaks request versions
// Kafka 4 no longer serves) and, for a subscriber, the initial offset `oldest` instead of
// `newest`, so that a subscriber on a fresh topic reads what was published before its
// consumer group settled (the tests use a topic of their own each time).
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/Shopify/sarama"
	kafka "github.com/go-micro/plugins/v4/broker/kafka"
	micro "go-micro.dev/v4"
	"go-micro.dev/v4/broker"
	"go-micro.dev/v4/client"
	"go-micro.dev/v4/logger"
	"go-micro.dev/v4/metadata"
	"go-micro.dev/v4/registry"
	"go-micro.dev/v4/server"
	"google.golang.org/protobuf/proto"

	"event-interop/go-micro-peer/internal/peer"
	"event-interop/go-micro-peer/pb/usersv1"
)

func init() {
	logger.DefaultLogger = logger.NewLogger(logger.WithOutput(os.Stderr))
}

func kafkaAddress(o peer.Options) string {
	if o.Address != "" {
		return o.Address
	}
	return peer.KafkaAddr
}

func kafkaBroker(o peer.Options) broker.Broker {
	producer := sarama.NewConfig()
	producer.Version = sarama.V2_8_0_0
	producer.Producer.Return.Successes = true // a sync producer needs it
	consumer := sarama.NewConfig()
	consumer.Version = sarama.V2_8_0_0
	consumer.Consumer.Return.Errors = true
	consumer.Consumer.Offsets.Initial = sarama.OffsetOldest
	return kafka.NewBroker(
		broker.Addrs(strings.Split(kafkaAddress(o), ",")...),
		kafka.BrokerConfig(producer),
		kafka.ClusterConfig(consumer),
	)
}

type recordingKafka struct {
	broker.Broker
	onPublish func(topic string, header map[string]string)
}

func (r *recordingKafka) Publish(topic string, m *broker.Message, opts ...broker.PublishOption) error {
	if err := r.Broker.Publish(topic, m, opts...); err != nil {
		return err
	}
	r.onPublish(topic, peer.RecordingHeader(m.Header))
	return nil
}

func publishKafka(o peer.Options) error {
	b := kafkaBroker(o)
	if err := b.Init(); err != nil {
		return err
	}
	if err := b.Connect(); err != nil {
		return fmt.Errorf("connect to Kafka at %s: %w", kafkaAddress(o), err)
	}
	defer b.Disconnect()
	var current map[string]any
	recorder := &recordingKafka{Broker: b}
	clientOptions := []client.Option{client.Broker(recorder), client.Registry(registry.NewMemoryRegistry())}
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

func subscribeKafka(o peer.Options) error {
	b := kafkaBroker(o)
	received := peer.NewCounter(o.Count)
	srv := server.NewServer(
		server.Name("go-micro-peer"),
		server.Address("127.0.0.1:0"),
		server.Broker(b),
		server.Registry(registry.NewMemoryRegistry()),
	)
	handler := func(ctx context.Context, user *usersv1.UserCreated) error {
		md, _ := metadata.FromContext(ctx)
		peer.Emit(peer.Received(peer.Lookup(md, "Micro-Topic"), user, md, peer.Lookup(md, "Micro-ID")))
		received.Add()
		return nil
	}
	if err := micro.RegisterSubscriber(o.Topic, srv, handler, server.SubscriberQueue(o.Queue)); err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Stop()
	// the consumer group starts from the oldest offset: what is published from now on is
	// read, whenever the group settles
	peer.Emit(peer.Ready(o))
	return received.Wait(o.Timeout)
}

// Writes one record with sarama itself, not through go-micro, as a Go service that uses
// sarama directly does: the protobuf of the run's first message, the headers a typed
// publisher of ours writes for it (ce_type, content-type), then each --header-hex, whose
// name may be any bytes (a header name that is not UTF-8, which no Rust or Python Kafka
// client can write). Prints {"event":"recorded","topic":…,"partition":…,"offset":…}.
func recordKafka(o peer.Options) error {
	config := sarama.NewConfig()
	config.Version = sarama.V2_8_0_0
	config.Producer.Return.Successes = true
	config.Producer.RequiredAcks = sarama.WaitForAll
	producer, err := sarama.NewSyncProducer(strings.Split(kafkaAddress(o), ","), config)
	if err != nil {
		return fmt.Errorf("connect to Kafka at %s: %w", kafkaAddress(o), err)
	}
	defer producer.Close()
	m, err := peer.Message(o, 0)
	if err != nil {
		return err
	}
	value, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	headers := []sarama.RecordHeader{
		{Key: []byte("ce_type"), Value: []byte(proto.MessageName(m))},
		{Key: []byte("content-type"), Value: []byte("application/protobuf")},
	}
	for _, h := range o.RawHeaders {
		headers = append(headers, sarama.RecordHeader{Key: h.Name, Value: []byte(h.Value)})
	}
	partition, offset, err := producer.SendMessage(&sarama.ProducerMessage{
		Topic:   o.Topic,
		Value:   sarama.ByteEncoder(value),
		Headers: headers,
	})
	if err != nil {
		return fmt.Errorf("produce to %s: %w", o.Topic, err)
	}
	peer.Emit(map[string]any{"event": "recorded", "topic": o.Topic, "partition": partition, "offset": offset})
	return nil
}

func main() {
	o := peer.Parse(os.Args[1:])
	var err error
	switch o.Command {
	case "publish":
		err = publishKafka(o)
	case "record":
		err = recordKafka(o)
	default:
		err = subscribeKafka(o)
	}
	if err != nil {
		peer.Fail(err.Error())
	}
}
