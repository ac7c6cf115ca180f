// go-redis-client: a real Redis client (github.com/redis/go-redis/v9) that the Rust tests of
// event-gateway spawn to check that the gateway speaks the Redis protocol (RESP2 and RESP3)
// the way an actual client library expects. It uses go-redis's own high-level API only
// (Publish, Subscribe, XAdd, XGroupCreateMkStream, XReadGroup, XAck, XPending), never Do().
//
// Usage:
//
//	go-redis-client [--addr 127.0.0.1:6380] [--password P] [--protocol 2|3] <command> args...
//
//	ping
//	publish <channel> <payload>...
//	subscribe <channel> <count>
//	xadd <stream> <count> <prefix> [field=value ...]
//	xgroup-create <stream> <group> <start>
//	xconsume <stream> <group> <consumer> <count> [--no-ack] [--block-ms N] [--batch N]
//	xpending <stream> <group>
//
// Flags may stand anywhere (before or after the command); "--" ends them. Output is one JSON
// object per line on stdout, written as soon as it is known (os.Stdout is unbuffered), so a
// test can read it line by line while the process runs. On failure the program prints
// {"error":"<text>"} on stdout (and the text on stderr) and exits 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// options holds the flags; the command-specific ones are only read by their command.
type options struct {
	addr     string
	password string
	protocol int
	noAck    bool
	blockMs  int64
	batch    int64
}

// emit writes one JSON line to stdout. SetEscapeHTML(false) keeps payloads such as "<a&b>"
// as they are (the output is JSON either way).
func emit(v any) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		fail(fmt.Errorf("encoding output: %w", err))
	}
	if _, err := os.Stdout.WriteString(b.String()); err != nil {
		os.Exit(1)
	}
}

// fail prints the error as {"error": ...} and exits 1.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "go-redis-client: %v\n", err)
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	os.Stdout.Write(append(b, '\n'))
	os.Exit(1)
}

func failf(format string, args ...any) { fail(fmt.Errorf(format, args...)) }

// failUsage is fail for a malformed command line: the usage goes to stderr only.
func failUsage(format string, args ...any) {
	fmt.Fprintln(os.Stderr, usage)
	failf(format, args...)
}

const usage = `usage: go-redis-client [--addr 127.0.0.1:6380] [--password P] [--protocol 2|3] <command> args...
  ping
  publish <channel> <payload>...
  subscribe <channel> <count>
  xadd <stream> <count> <prefix> [field=value ...]
  xgroup-create <stream> <group> <start>
  xconsume <stream> <group> <consumer> <count> [--no-ack] [--block-ms N] [--batch N]
  xpending <stream> <group>`

// parseArgs separates the flags (--name value or --name=value) from the positional arguments.
func parseArgs(args []string) (options, []string) {
	opt := options{addr: "127.0.0.1:6380", protocol: 3, blockMs: 2000, batch: 10}
	var pos []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "--") {
			pos = append(pos, arg)
			continue
		}
		name, value, hasValue := strings.Cut(arg[2:], "=")
		// value returns the flag's value, from "--name=value" or from the next argument.
		next := func() string {
			if hasValue {
				return value
			}
			if i+1 >= len(args) {
				failUsage("flag --%s needs a value", name)
			}
			i++
			return args[i]
		}
		switch name {
		case "addr":
			opt.addr = next()
		case "password":
			opt.password = next()
		case "protocol":
			opt.protocol = int(parseInt("--protocol", next()))
			if opt.protocol != 2 && opt.protocol != 3 {
				failf("--protocol must be 2 or 3, not %d", opt.protocol)
			}
		case "no-ack":
			if hasValue {
				failf("flag --no-ack takes no value")
			}
			opt.noAck = true
		case "block-ms":
			opt.blockMs = parseInt("--block-ms", next())
		case "batch":
			opt.batch = parseInt("--batch", next())
			if opt.batch < 1 {
				failf("--batch must be at least 1")
			}
		case "help":
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(0)
		default:
			failUsage("unknown flag %s", arg)
		}
	}
	return opt, pos
}

func parseInt(what, s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		failf("%s: not a number: %q", what, s)
	}
	return n
}

// parseCount parses a message count (a non-negative integer).
func parseCount(s string) int64 {
	n := parseInt("count", s)
	if n < 0 {
		failf("count must not be negative: %d", n)
	}
	return n
}

// need checks the number of positional arguments after the command name.
func need(cmd string, args []string, min, max int) {
	if len(args) < min || (max >= 0 && len(args) > max) {
		failUsage("%s: wrong number of arguments", cmd)
	}
}

func main() {
	opt, pos := parseArgs(os.Args[1:])
	if len(pos) == 0 {
		failUsage("no command given")
	}
	cmd, args := pos[0], pos[1:]

	rdb := redis.NewClient(&redis.Options{
		Addr:     opt.addr,
		Password: opt.password,
		Protocol: opt.protocol,
	})
	defer rdb.Close()
	ctx := context.Background()

	switch cmd {
	case "ping":
		need(cmd, args, 0, 0)
		ping(ctx, rdb)
	case "publish":
		need(cmd, args, 2, -1)
		publish(ctx, rdb, args[0], args[1:])
	case "subscribe":
		need(cmd, args, 2, 2)
		subscribe(ctx, rdb, args[0], parseCount(args[1]))
	case "xadd":
		need(cmd, args, 3, -1)
		xadd(ctx, rdb, args[0], parseCount(args[1]), args[2], args[3:])
	case "xgroup-create":
		need(cmd, args, 3, 3)
		xgroupCreate(ctx, rdb, args[0], args[1], args[2])
	case "xconsume":
		need(cmd, args, 4, 4)
		xconsume(ctx, rdb, opt, args[0], args[1], args[2], parseCount(args[3]))
	case "xpending":
		need(cmd, args, 2, 2)
		xpending(ctx, rdb, args[0], args[1])
	default:
		failUsage("unknown command %q", cmd)
	}
}

func ping(ctx context.Context, rdb *redis.Client) {
	pong, err := rdb.Ping(ctx).Result()
	if err != nil {
		failf("PING: %v", err)
	}
	emit(struct {
		Pong string `json:"pong"`
	}{pong})
}

func publish(ctx context.Context, rdb *redis.Client, channel string, payloads []string) {
	for _, payload := range payloads {
		n, err := rdb.Publish(ctx, channel, payload).Result()
		if err != nil {
			failf("PUBLISH %s: %v", channel, err)
		}
		emit(struct {
			Published string `json:"published"`
			Receivers int64  `json:"receivers"`
		}{payload, n})
	}
}

// subscribe waits for the server's subscribe confirmation before saying "subscribed", so that a
// test may publish as soon as it reads that line; then it prints <count> messages and exits.
func subscribe(ctx context.Context, rdb *redis.Client, channel string, count int64) {
	sub := rdb.Subscribe(ctx, channel)
	defer sub.Close()
	reply, err := sub.Receive(ctx)
	if err != nil {
		failf("SUBSCRIBE %s: %v", channel, err)
	}
	switch r := reply.(type) {
	case *redis.Subscription:
		if r.Kind != "subscribe" || r.Channel != channel {
			failf("SUBSCRIBE %s: unexpected confirmation %s", channel, r)
		}
	default:
		failf("SUBSCRIBE %s: expected a subscription confirmation, got %T %v", channel, reply, reply)
	}
	emit(struct {
		Subscribed string `json:"subscribed"`
	}{channel})
	for got := int64(0); got < count; got++ {
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			failf("receiving on %s: %v", channel, err)
		}
		emit(struct {
			Channel string `json:"channel"`
			Payload string `json:"payload"`
		}{msg.Channel, msg.Payload})
	}
}

func xadd(ctx context.Context, rdb *redis.Client, stream string, count int64, prefix string, extra []string) {
	var fields []string
	for _, kv := range extra {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			failf("xadd: extra field %q is not field=value", kv)
		}
		fields = append(fields, k, v)
	}
	for i := int64(0); i < count; i++ {
		payload := prefix + strconv.FormatInt(i, 10)
		values := append([]string{"payload", payload}, fields...)
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: "*", Values: values}).Result()
		if err != nil {
			failf("XADD %s: %v", stream, err)
		}
		emit(struct {
			ID      string `json:"id"`
			Payload string `json:"payload"`
		}{id, payload})
	}
}

func xgroupCreate(ctx context.Context, rdb *redis.Client, stream, group, start string) {
	created := true
	if err := rdb.XGroupCreateMkStream(ctx, stream, group, start).Err(); err != nil {
		if !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			failf("XGROUP CREATE %s %s: %v", stream, group, err)
		}
		created = false
	}
	emit(struct {
		Group   string `json:"group"`
		Created bool   `json:"created"`
	}{group, created})
}

// xconsume reads new messages (">") for its consumer until <count> were printed, acking each
// right after printing it unless --no-ack. It never asks for more than it still needs, so that
// nothing is delivered to it (and left pending) that it does not print.
func xconsume(ctx context.Context, rdb *redis.Client, opt options, stream, group, consumer string, count int64) {
	block := time.Duration(opt.blockMs) * time.Millisecond
	if opt.blockMs < 0 {
		block = -1 // go-redis: no BLOCK argument at all
	}
	for printed := int64(0); printed < count; {
		streams, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group:    group,
			Consumer: consumer,
			Streams:  []string{stream, ">"},
			Count:    min(opt.batch, count-printed),
			Block:    block,
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue // the block timed out with nothing new
		}
		if err != nil {
			failf("XREADGROUP %s %s %s: %v", stream, group, consumer, err)
		}
		for _, s := range streams {
			for _, msg := range s.Messages {
				fields := msg.Values
				if fields == nil {
					fields = map[string]any{}
				}
				emit(struct {
					ID     string         `json:"id"`
					Fields map[string]any `json:"fields"`
				}{msg.ID, fields})
				if !opt.noAck {
					if err := rdb.XAck(ctx, stream, group, msg.ID).Err(); err != nil {
						failf("XACK %s %s %s: %v", stream, group, msg.ID, err)
					}
				}
				printed++
			}
		}
	}
}

func xpending(ctx context.Context, rdb *redis.Client, stream, group string) {
	p, err := rdb.XPending(ctx, stream, group).Result()
	if err != nil {
		failf("XPENDING %s %s: %v", stream, group, err)
	}
	consumers := p.Consumers
	if consumers == nil {
		consumers = map[string]int64{}
	}
	emit(struct {
		Count     int64            `json:"count"`
		Consumers map[string]int64 `json:"consumers"`
	}{p.Count, consumers})
}
