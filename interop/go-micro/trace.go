package main

// Tracing, as a go-micro v5 service gets it with its OpenTelemetry wrapper: the client wrapper
// starts a span for each publish and writes its W3C `Traceparent` into the message's metadata
// (a header on the broker), the subscriber wrapper continues the trace a message carries. The
// spans are not exported; the peer reports the trace id its handler runs in.

import (
	"context"

	"go-micro.dev/v5/client"
	"go-micro.dev/v5/server"
	"go-micro.dev/v5/wrapper/trace/opentelemetry"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func init() {
	otel.SetTracerProvider(sdktrace.NewTracerProvider())
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{},
	))
}

// tracedClient is go-micro's client option that adds the publish spans.
func tracedClient() client.Option {
	return client.Wrap(opentelemetry.NewClientWrapper())
}

// tracedSubscriber is go-micro's server option that continues a message's trace.
func tracedSubscriber() server.Option {
	return server.WrapSubscriber(opentelemetry.NewSubscriberWrapper())
}

// traceID is the trace a handler runs in ("" outside any).
func traceID(ctx context.Context) string {
	span := trace.SpanContextFromContext(ctx)
	if !span.IsValid() {
		return ""
	}
	return span.TraceID().String()
}
