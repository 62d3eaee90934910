// Command example asks a modelroute server which model to use, then runs a (simulated)
// LLM call with CallWithFallback. With -simulate-quota the first model answers HTTP 429
// "quota exceeded", so you can watch the call move to the fallback and the server put
// the model in cooldown for every other caller.
//
//	go run ./example -addr 127.0.0.1:50051 -context rag.answer -simulate-quota
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"time"

	modelroute "github.com/modelroute/modelroute/clients/go"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "modelroute gRPC address")
	ctxName := flag.String("context", "rag.answer", "call site to resolve")
	user := flag.String("user", "user-42", "end user id")
	tier := flag.String("tier", "free", "end user tier")
	simulateQuota := flag.Bool("simulate-quota", false, "make the first model fail with a 429 quota error")
	flag.Parse()

	client, err := modelroute.Dial(*addr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	client.OnReportError = func(err error) { log.Printf("usage report lost: %v", err) }

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := modelroute.ResolveOptions{UserID: *user, Tier: *tier}

	d, err := client.Resolve(ctx, *ctxName, opts)
	if err != nil {
		log.Fatalf("resolve: %v", err)
	}
	fmt.Printf("resolve %s: %s (%s, %s), fallbacks %v\n",
		*ctxName, d.GetModelId(), d.GetProvider(), d.GetReason(), d.GetFallbackModelIds())

	first := true
	model, err := client.CallWithFallbackOpts(ctx, *ctxName, opts,
		func(ctx context.Context, modelID string) (modelroute.Tokens, error) {
			// Replace this with your provider SDK call.
			if *simulateQuota && first {
				first = false
				return modelroute.Tokens{}, &modelroute.ProviderError{StatusCode: 429,
					Err: errors.New("429: quota exceeded")}
			}
			return modelroute.Tokens{Input: 1200, Output: 300}, nil
		})
	if err != nil {
		log.Fatalf("call: %v", err)
	}
	fmt.Printf("call served by %s\n", model)

	d, err = client.Resolve(ctx, *ctxName, opts)
	if err != nil {
		log.Fatalf("resolve: %v", err)
	}
	fmt.Printf("resolve again: %s (fallback from %q, cause %s)\n",
		d.GetModelId(), d.GetFallback().GetFromModelId(), d.GetFallback().GetCause())
}
