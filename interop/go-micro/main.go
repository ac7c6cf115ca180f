// Command go-micro-peer is a go-micro service the Rust tests exchange events with: it
// publishes with go-micro's client (`micro.NewEvent(topic, client).Publish`, so go-micro's
// own headers: Micro-ID, Micro-Topic, Content-Type and the context metadata) and subscribes
// with go-micro's server (`micro.RegisterSubscriber`).
//
// RabbitMQ and NATS are served here, on go-micro v5 and its built-in brokers (rabbitmq.go,
// nats.go). Kafka is served by go-micro-peer-kafka (./kafka, go-micro v4 and its Kafka
// broker plugin), which this program runs in its place for `--broker kafka`: it must sit in
// the same directory (build.sh puts it there).
//
//	go-micro-peer publish   --broker rabbitmq|kafka|nats --topic T --count N
//	                        [--content-type application/json|application/protobuf]
//	                        [--type users.v1.UserCreated|shop.v1.OrderPlaced]
//	                        [--meta k=v]... [--id-prefix P]
//	go-micro-peer subscribe --broker rabbitmq|kafka|nats --topic T --queue Q --count N
//	                        [--timeout 60s]
//	go-micro-peer record    --broker kafka --topic T [--header-hex NAME=value]...
//
// Standard output carries one JSON object a line and nothing else (go-micro logs to
// standard error):
//
//	{"event":"published","topic":…,"type":…,"header":{…},"micro_id":…,"fields":{…}}
//	{"event":"ready","topic":…,"queue":…}   (subscribe: from now on it consumes)
//	{"event":"received","topic":…,"type":…,"fields":{…},"metadata":{…},"micro_id":…}
//	{"event":"recorded","topic":…,"partition":…,"offset":…}   (record: sarama, not go-micro)
//
// A published line shows the broker message as go-micro's client handed it to the broker
// (the header map it built, with the Micro-ID it generated), after the broker published it.
// A received line shows the message go-micro's server decoded for a
// `func(context.Context, *usersv1.UserCreated) error` subscriber and the metadata go-micro
// put in its context. A subscriber exits 0 after --count messages.
package main

import (
	"os"
	"path/filepath"
	"syscall"

	"event-interop/go-micro-peer/internal/peer"
)

func main() {
	o := peer.Parse(os.Args[1:])
	var err error
	switch {
	case o.Broker == "kafka":
		err = execKafka()
	case o.Broker == "nats" && o.Command == "publish":
		err = publishNATS(o)
	case o.Broker == "nats":
		err = subscribeNATS(o)
	case o.Command == "publish":
		err = publishRabbitMQ(o)
	default:
		err = subscribeRabbitMQ(o)
	}
	if err != nil {
		peer.Fail(err.Error())
	}
}

// Replaces this process with go-micro-peer-kafka, same arguments.
func execKafka() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kafka := filepath.Join(filepath.Dir(self), "go-micro-peer-kafka")
	if err := peer.RestoreStdout(); err != nil {
		return err
	}
	return syscall.Exec(kafka, append([]string{kafka}, os.Args[1:]...), os.Environ())
}
