package modelroute_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	modelroute "github.com/modelroute/modelroute/clients/go"
	pb "github.com/modelroute/modelroute/clients/go/gen/modelroute/v1"
)

func TestResolveAnswersTheSeededUsageMap(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := ctxT(t)

	d, err := s.Client.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{UserID: "u1", Tier: "free"})
	if err != nil {
		t.Fatal(err)
	}
	if d.GetModelId() != "gemini-3-flash-preview" || d.GetProvider() != "google" {
		t.Errorf("model = %s/%s, want google/gemini-3-flash-preview", d.GetProvider(), d.GetModelId())
	}
	if d.GetReason() != pb.Reason_REASON_CONTEXT_DEFAULT {
		t.Errorf("reason = %s, want CONTEXT_DEFAULT", d.GetReason())
	}
	if len(d.GetFallbackModelIds()) == 0 || d.GetFallbackModelIds()[0] != "gpt-4o-mini" {
		t.Errorf("fallbacks = %v, want gpt-4o-mini first", d.GetFallbackModelIds())
	}
	if d.GetDecisionId() == "" || d.GetConfigRevision() <= 0 {
		t.Errorf("decision id %q, revision %d: want both set", d.GetDecisionId(), d.GetConfigRevision())
	}

	// An unknown context still gets a model (the global default), with a warning.
	d, err = s.Client.Resolve(ctx, "no.such.context", modelroute.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.GetReason() != pb.Reason_REASON_GLOBAL_DEFAULT || len(d.GetWarnings()) == 0 {
		t.Errorf("unknown context: reason %s warnings %v, want GLOBAL_DEFAULT with a warning",
			d.GetReason(), d.GetWarnings())
	}

	// A malformed context is the caller's bug: INVALID_ARGUMENT.
	_, err = s.Client.Resolve(ctx, "bad context!", modelroute.ResolveOptions{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("malformed context: %v, want InvalidArgument", err)
	}

	// An operator override written straight into etcd applies without a restart.
	s.etcdctl(t, "put", "/modelroute/overrides/rag.answer",
		`{"model":"gpt-4o-mini","note":"go client test","expires":"2099-01-01T00:00:00Z"}`)
	eventually(t, 10*time.Second, func() error {
		d, err := s.Client.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{})
		if err != nil {
			return err
		}
		if d.GetModelId() != "gpt-4o-mini" || d.GetReason() != pb.Reason_REASON_OPERATOR_OVERRIDE {
			return fmt.Errorf("got %s (%s)", d.GetModelId(), d.GetReason())
		}
		return nil
	})
}

func TestReportIsCostedAndIdempotent(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := ctxT(t)
	d, err := s.Client.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{UserID: "u2", Tier: "free"})
	if err != nil {
		t.Fatal(err)
	}
	u := modelroute.Usage{
		ReportID: "go-report-1", DecisionID: d.GetDecisionId(), Context: "rag.answer",
		ModelID: d.GetModelId(), UserID: "u2", Tier: "free",
		InputTokens: 1_000_000, OutputTokens: 1_000_000, Latency: 1200 * time.Millisecond,
		Outcome: pb.Outcome_OUTCOME_OK,
	}
	res, err := s.Client.Report(ctx, u, modelroute.Usage{Context: "rag.answer", ModelID: "gpt-4o-mini"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("got %d results, want 2", len(res))
	}
	// Seeded prices for gemini-3-flash-preview: $0.5 in + $3 out per million tokens.
	if res[0].GetStatus() != pb.ReportStatus_REPORT_STATUS_ACCEPTED || !approx(res[0].GetEstimatedCostUsd(), 3.5) {
		t.Errorf("first report: %s cost %v, want ACCEPTED $3.5", res[0].GetStatus(), res[0].GetEstimatedCostUsd())
	}
	// No outcome: the server rejects that one report, not the batch.
	if res[1].GetStatus() != pb.ReportStatus_REPORT_STATUS_REJECTED || res[1].GetError() == "" {
		t.Errorf("report without outcome: %s %q, want REJECTED with a reason", res[1].GetStatus(), res[1].GetError())
	}
	if res[1].GetReportId() == "" {
		t.Error("the client should have generated a report id")
	}

	// Retrying with the same id (e.g. after a timeout) stores nothing twice.
	res, err = s.Client.Report(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].GetStatus() != pb.ReportStatus_REPORT_STATUS_DUPLICATE {
		t.Errorf("retried report: %s, want DUPLICATE", res[0].GetStatus())
	}
}

func TestQuotaErrorFallsBackAndCoolsTheModelDown(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := ctxT(t)
	var reportErrs []error
	s.Client.OnReportError = func(err error) { reportErrs = append(reportErrs, err) }

	var tried []string
	model, err := s.Client.CallWithFallback(ctx, "rag.answer", func(modelID string) error {
		tried = append(tried, modelID)
		if modelID == "gemini-3-flash-preview" {
			// What a provider SDK typically returns on HTTP 429.
			return &modelroute.ProviderError{StatusCode: 429, RetryAfter: 30 * time.Second,
				Err: errors.New("429 RESOURCE_EXHAUSTED: Quota exceeded for generate_content")}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if model != "gpt-4o-mini" || len(tried) != 2 {
		t.Errorf("served by %s after trying %v, want gpt-4o-mini after gemini-3-flash-preview", model, tried)
	}
	if len(reportErrs) != 0 {
		t.Errorf("reports failed: %v", reportErrs)
	}

	// Every other caller now gets the fallback straight away, and is told why.
	eventually(t, 10*time.Second, func() error {
		d, err := s.Client.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{})
		if err != nil {
			return err
		}
		if d.GetModelId() != "gpt-4o-mini" || d.GetFallback().GetCause() != pb.FallbackCause_FALLBACK_CAUSE_COOLDOWN ||
			d.GetFallback().GetFromModelId() != "gemini-3-flash-preview" {
			return fmt.Errorf("got %s fallback %v", d.GetModelId(), d.GetFallback())
		}
		return nil
	})

	// The next CallWithFallback goes directly to the fallback: one attempt.
	tried = nil
	model, err = s.Client.CallWithFallback(ctx, "rag.answer", func(modelID string) error {
		tried = append(tried, modelID)
		return nil
	})
	if err != nil || model != "gpt-4o-mini" || len(tried) != 1 {
		t.Errorf("second call: %s %v tried %v, want gpt-4o-mini in one attempt", model, err, tried)
	}
}

func TestFailuresThatAnotherModelWouldRepeatAreNotRetried(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := ctxT(t)

	var tried []string
	filtered := &modelroute.ProviderError{Outcome: pb.Outcome_OUTCOME_CONTENT_FILTERED, Err: errors.New("blocked")}
	_, err := s.Client.CallWithFallback(ctx, "rag.answer", func(modelID string) error {
		tried = append(tried, modelID)
		return filtered
	})
	var all *modelroute.AllModelsFailedError
	if !errors.As(err, &all) || !errors.Is(err, filtered) || len(tried) != 1 {
		t.Fatalf("err %v tried %v: want one attempt and the provider error", err, tried)
	}

	// Plain errors mentioning a rate limit are classified too; when every model fails,
	// the error lists each attempt.
	tried = nil
	_, err = s.Client.CallWithFallback(ctx, "reranker", func(modelID string) error {
		tried = append(tried, modelID)
		return errors.New("openai: 429 Too Many Requests")
	})
	if !errors.As(err, &all) || len(all.Attempts) != len(tried) || len(tried) < 2 {
		t.Fatalf("err %v tried %v: want every model of the chain attempted", err, tried)
	}
	for _, a := range all.Attempts {
		if a.Outcome != pb.Outcome_OUTCOME_RATE_LIMITED {
			t.Errorf("%s reported as %s, want RATE_LIMITED", a.ModelID, a.Outcome)
		}
	}
	// Both models are cooling down now: the server says no model is available.
	eventually(t, 10*time.Second, func() error {
		_, err := s.Client.Resolve(ctx, "reranker", modelroute.ResolveOptions{})
		if status.Code(err) != codes.ResourceExhausted {
			return fmt.Errorf("resolve: %v, want ResourceExhausted", err)
		}
		return nil
	})
}

func approx(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }
