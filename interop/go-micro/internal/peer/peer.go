// Package peer is what the two go-micro peers share: the command line, the messages they
// publish and the JSON lines they print. The RabbitMQ and NATS peer is built on go-micro v5,
// the Kafka peer on go-micro v4 (the only version the Kafka broker plugin is published for);
// both versions register the same protobuf types (protorpc.Request...) in the global
// registry, so they cannot be linked into one binary.
package peer

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"event-interop/go-micro-peer/pb/shopv1"
	"event-interop/go-micro-peer/pb/usersv1"
)

// The brokers' default addresses.
const (
	RabbitURL = "amqp://guest:guest@127.0.0.1:5672/"
	KafkaAddr = "127.0.0.1:9092"
	NatsAddr  = "nats://127.0.0.1:4222"
)

// NatsURL is the NATS server: EVENT_TEST_NATS (the variable the Rust tests read) when set,
// else NatsAddr.
func NatsURL() string {
	if url := os.Getenv("EVENT_TEST_NATS"); url != "" {
		return url
	}
	return NatsAddr
}

// Usage is the command line.
const Usage = `usage:
  go-micro-peer publish   --broker rabbitmq|kafka|nats --topic T [--count N]
                          [--content-type application/json|application/protobuf]
                          [--type users.v1.UserCreated|shop.v1.OrderPlaced]
                          [--meta k=v]... [--id-prefix P] [--address A]
  go-micro-peer subscribe --broker rabbitmq|kafka|nats --topic T --queue Q [--count N]
                          [--timeout 60s] [--address A]
  go-micro-peer record    --broker kafka --topic T [--header-hex NAME=value]... [--address A]`

type metaFlag map[string]string

func (m metaFlag) String() string { return fmt.Sprint(map[string]string(m)) }

func (m metaFlag) Set(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" {
		return fmt.Errorf("--meta wants k=v, got %q", kv)
	}
	m[k] = v
	return nil
}

// RawHeader is a record header whose name is given in hex (`--header-hex`), so that it can
// be any bytes.
type RawHeader struct {
	Name  []byte
	Value string
}

type rawHeaderFlag struct{ headers *[]RawHeader }

func (f rawHeaderFlag) String() string { return "" }

func (f rawHeaderFlag) Set(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	name, err := hex.DecodeString(k)
	if !ok || k == "" || err != nil {
		return fmt.Errorf("--header-hex wants HEXNAME=value, got %q", kv)
	}
	*f.headers = append(*f.headers, RawHeader{Name: name, Value: v})
	return nil
}

// Options are a run's flags.
type Options struct {
	Command     string
	Broker      string
	Topic       string
	Queue       string
	Count       int
	ContentType string
	TypeName    string
	IDPrefix    string
	Meta        map[string]string
	Timeout     time.Duration
	Address     string
	RawHeaders  []RawHeader
}

// Parse reads `args` (without the program name); it exits with the usage on an error.
func Parse(args []string) Options {
	if len(args) < 1 || (args[0] != "publish" && args[0] != "subscribe" && args[0] != "record") {
		Fail(Usage)
	}
	meta := metaFlag{}
	o := Options{Command: args[0], Meta: meta}
	flags := flag.NewFlagSet(o.Command, flag.ExitOnError)
	flags.StringVar(&o.Broker, "broker", "rabbitmq", "rabbitmq, kafka or nats")
	flags.StringVar(&o.Topic, "topic", "", "the topic")
	flags.StringVar(&o.Queue, "queue", "", "subscribe: the queue (consumer group)")
	flags.IntVar(&o.Count, "count", 1, "messages to publish, or to receive before exiting")
	flags.StringVar(&o.ContentType, "content-type", "", "publish: the client's content type (default go-micro's, application/json)")
	flags.StringVar(&o.TypeName, "type", "users.v1.UserCreated", "publish: users.v1.UserCreated or shop.v1.OrderPlaced")
	flags.StringVar(&o.IDPrefix, "id-prefix", "go", "publish: the prefix of the user ids")
	flags.Var(meta, "meta", "publish: context metadata k=v (repeatable)")
	flags.Var(rawHeaderFlag{&o.RawHeaders}, "header-hex", "record: one more header, its name in hex (repeatable)")
	flags.DurationVar(&o.Timeout, "timeout", 60*time.Second, "subscribe: give up after this long")
	flags.StringVar(&o.Address, "address", "", "the broker's address (default: RabbitMQ "+RabbitURL+", Kafka "+KafkaAddr+", NATS $EVENT_TEST_NATS or "+NatsAddr+")")
	_ = flags.Parse(args[1:])
	if o.Topic == "" {
		Fail("--topic is required\n" + Usage)
	}
	if o.Command == "subscribe" && o.Queue == "" {
		Fail("--queue is required\n" + Usage)
	}
	if o.Broker != "rabbitmq" && o.Broker != "kafka" && o.Broker != "nats" {
		Fail("--broker: rabbitmq, kafka or nats, not " + o.Broker)
	}
	if o.Command == "record" && o.Broker != "kafka" {
		Fail("record: Kafka only (--broker kafka)")
	}
	return o
}

// Fail reports `message` on standard error and exits with status 2.
func Fail(message string) {
	fmt.Fprintln(os.Stderr, "go-micro-peer:", message)
	os.Exit(2)
}

// Message is the i-th message of the run, of the type asked for.
func Message(o Options, i int) (proto.Message, error) {
	switch o.TypeName {
	case "users.v1.UserCreated":
		return &usersv1.UserCreated{
			UserId:      fmt.Sprintf("%s-%d", o.IDPrefix, i),
			Email:       fmt.Sprintf("user%d@example.com", i),
			DisplayName: fmt.Sprintf("User %d <%d>", i, i),
		}, nil
	case "shop.v1.OrderPlaced":
		return &shopv1.OrderPlaced{
			OrderId: fmt.Sprintf("%s-order-%d", o.IDPrefix, i),
			UserId:  fmt.Sprintf("%s-%d", o.IDPrefix, i),
			Items: []*shopv1.LineItem{
				{Sku: "sku-1", Quantity: 2, UnitPriceCents: 1250},
			},
			TotalCents: 2500,
		}, nil
	}
	return nil, fmt.Errorf("--type: %q is not users.v1.UserCreated or shop.v1.OrderPlaced", o.TypeName)
}

// The peer's standard output, for its JSON lines only: go-micro v4 logs to file descriptor 1
// in places, so from the start descriptor 1 is standard error, and the lines go to a copy of
// the original.
var (
	stdout  sync.Mutex
	jsonOut *os.File
)

func init() {
	fd, err := syscall.Dup(1)
	if err != nil {
		Fail("dup stdout: " + err.Error())
	}
	jsonOut = os.NewFile(uintptr(fd), "stdout")
	if err := syscall.Dup3(2, 1, 0); err != nil {
		Fail("stdout to stderr: " + err.Error())
	}
}

// RestoreStdout gives descriptor 1 back its original, before this process execs another
// peer.
func RestoreStdout() error {
	return syscall.Dup3(int(jsonOut.Fd()), 1, 0)
}

// Emit writes one JSON line to standard output.
func Emit(line map[string]any) {
	b, err := json.Marshal(line)
	if err != nil {
		Fail(err.Error())
	}
	stdout.Lock()
	defer stdout.Unlock()
	if _, err := jsonOut.Write(append(b, '\n')); err != nil {
		Fail("write a line: " + err.Error())
	}
}

// `m` as proto3 JSON.
func fields(m proto.Message) json.RawMessage {
	b, err := protojson.Marshal(m)
	if err != nil {
		Fail(err.Error())
	}
	return b
}

// Published is the line for `m`, handed to the broker for `topic` with `header`.
func Published(topic string, m proto.Message, header map[string]string) map[string]any {
	return map[string]any{
		"event":    "published",
		"topic":    topic,
		"type":     string(proto.MessageName(m)),
		"header":   header,
		"micro_id": Lookup(header, "Micro-ID"),
		"fields":   fields(m),
	}
}

// Received is the line for `m`, received on `topic` with `metadata` in its context.
func Received(topic string, m proto.Message, metadata map[string]string, microID string) map[string]any {
	return map[string]any{
		"event":    "received",
		"topic":    topic,
		"type":     string(proto.MessageName(m)),
		"fields":   fields(m),
		"metadata": metadata,
		"micro_id": microID,
	}
}

// Ready is the line a subscriber prints once it consumes.
func Ready(o Options) map[string]any {
	return map[string]any{"event": "ready", "topic": o.Topic, "queue": o.Queue}
}

// Counter counts received messages; Done is closed at the wanted one.
type Counter struct {
	mu   sync.Mutex
	n    int
	want int
	done chan struct{}
}

// NewCounter counts up to `want`.
func NewCounter(want int) *Counter { return &Counter{want: want, done: make(chan struct{})} }

// Add counts one.
func (c *Counter) Add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.n == c.want {
		close(c.done)
	}
}

// Wait returns once all were counted, or an error after `timeout`.
func (c *Counter) Wait(timeout time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
		c.mu.Lock()
		defer c.mu.Unlock()
		return fmt.Errorf("received %d of %d messages in %s", c.n, c.want, timeout)
	}
}

// RecordingHeader copies a header map, for a Published line.
func RecordingHeader(h map[string]string) map[string]string {
	header := make(map[string]string, len(h))
	for k, v := range h {
		header[k] = v
	}
	return header
}

// Lookup is the value of `name` in `h`, in any case (go-micro v4 writes `Micro-Id`, v5
// `Micro-ID`).
func Lookup(h map[string]string, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}
