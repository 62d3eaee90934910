package modelroute

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/modelroute/modelroute/clients/go/gen/modelroute/v1"
)

// Client talks to one modelroute server (or a load balancer in front of replicas).
// It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	rpc  pb.ModelRouterServiceClient

	// OnReportError, when set, receives ReportUsage failures from CallWithFallback.
	// Reporting is best effort there: a lost report must never fail the user's LLM call.
	OnReportError func(error)
}

// Dial connects to addr ("host:port"). Without options the connection is plaintext,
// which suits a sidecar or an in-cluster server; pass grpc.WithTransportCredentials
// (and any interceptors, e.g. for tracing) to override. Dial does not wait for the
// server: the first RPC does.
func Dial(addr string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithInsecure()}
	}
	conn, err := grpc.Dial(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("modelroute: dial %s: %w", addr, err)
	}
	return NewClient(conn), nil
}

// NewClient wraps an existing connection (which the caller keeps ownership of,
// unless it calls Close on the returned client).
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{conn: conn, rpc: pb.NewModelRouterServiceClient(conn)}
}

// Close closes the underlying connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub returns the generated client, for RPCs this wrapper does not cover
// (preferences, feedback, ListModels, WatchConfig).
func (c *Client) Stub() pb.ModelRouterServiceClient { return c.rpc }

// ResolveOptions describe the call a decision is for. The zero value is valid.
type ResolveOptions struct {
	UserID string // stable user id: experiment bucketing and preferences use it
	Tier   string // e.g. "free" or "premium"
	// Attributes are free-form key/values passed to the server (at most 32).
	Attributes map[string]string
	// ExcludeModels are models the caller has just seen fail.
	ExcludeModels []string
	// RequestID is echoed into the decision's trace span.
	RequestID string
}

func (o ResolveOptions) user() *pb.User {
	if o.UserID == "" && o.Tier == "" {
		return nil
	}
	return &pb.User{Id: o.UserID, Tier: o.Tier}
}

// Resolve asks which model to use for one call in contextName (e.g. "rag.answer").
// The answer carries the model, the ordered fallbacks, the reason and a decision id
// to pass back in Report. Errors are gRPC status errors (see status.FromError);
// codes.ResourceExhausted means no model is available right now.
func (c *Client) Resolve(ctx context.Context, contextName string, opts ResolveOptions) (*pb.ResolveModelResponse, error) {
	return c.rpc.ResolveModel(ctx, &pb.ResolveModelRequest{
		Context:       contextName,
		User:          opts.user(),
		Attributes:    opts.Attributes,
		ExcludeModels: opts.ExcludeModels,
		RequestId:     opts.RequestID,
	})
}

// Usage describes one finished (or failed) LLM call.
type Usage struct {
	// ReportID is the idempotency key; a random one is chosen when empty. Reuse the
	// same id when retrying a report so the server stores it once.
	ReportID     string
	DecisionID   string // from Resolve, when the call followed one
	Context      string
	ModelID      string
	UserID, Tier string
	InputTokens  int64
	OutputTokens int64
	Latency      time.Duration
	Outcome      pb.Outcome
	ErrorMessage string
	RetryAfter   time.Duration // the provider's retry-after, 0 if none
	ProviderWide bool          // the provider said the limit covers all its models
	OccurredAt   time.Time     // zero: the server uses its receive time
}

func (u Usage) proto() *pb.UsageReport {
	r := &pb.UsageReport{
		ReportId:     u.ReportID,
		DecisionId:   u.DecisionID,
		Context:      u.Context,
		ModelId:      u.ModelID,
		InputTokens:  u.InputTokens,
		OutputTokens: u.OutputTokens,
		LatencyMs:    u.Latency.Milliseconds(),
		Outcome:      u.Outcome,
		ErrorMessage: u.ErrorMessage,
		ProviderWide: u.ProviderWide,
	}
	if r.ReportId == "" {
		r.ReportId = newReportID()
	}
	if u.UserID != "" || u.Tier != "" {
		r.User = &pb.User{Id: u.UserID, Tier: u.Tier}
	}
	if u.RetryAfter > 0 {
		r.RetryAfter = durationpb.New(u.RetryAfter)
	}
	if !u.OccurredAt.IsZero() {
		r.OccurredAt = timestamppb.New(u.OccurredAt)
	}
	return r
}

// Report sends usage reports in one batch (1..1000) and returns one result per
// report, in order: ACCEPTED (with the server-computed cost), DUPLICATE or REJECTED.
// A QUOTA_EXCEEDED or RATE_LIMITED outcome puts the model in cooldown on the server.
func (c *Client) Report(ctx context.Context, reports ...Usage) ([]*pb.ReportResult, error) {
	req := &pb.ReportUsageRequest{Reports: make([]*pb.UsageReport, 0, len(reports))}
	for _, u := range reports {
		req.Reports = append(req.Reports, u.proto())
	}
	resp, err := c.rpc.ReportUsage(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

// Tokens is what a successful (or partly billed) LLM call consumed.
type Tokens struct {
	Input, Output int64
}

// AllModelsFailedError is returned by CallWithFallback when every model in the chain
// failed (or a failure was not worth retrying on another model).
type AllModelsFailedError struct {
	Context  string
	Attempts []Attempt
}

// Attempt is one try of one model inside CallWithFallback.
type Attempt struct {
	ModelID string
	Outcome pb.Outcome
	Err     error
}

func (e *AllModelsFailedError) Error() string {
	if len(e.Attempts) == 0 {
		return fmt.Sprintf("modelroute: %s: no model attempted", e.Context)
	}
	last := e.Attempts[len(e.Attempts)-1]
	return fmt.Sprintf("modelroute: %s: %d model(s) failed, last %s (%s): %v",
		e.Context, len(e.Attempts), last.ModelID, last.Outcome, last.Err)
}

// Unwrap returns the last attempt's error, so errors.Is/As see the provider error.
func (e *AllModelsFailedError) Unwrap() error {
	if len(e.Attempts) == 0 {
		return nil
	}
	return e.Attempts[len(e.Attempts)-1].Err
}

// CallWithFallback resolves the model for contextName, runs call with it, reports the
// outcome, and on a failure worth retrying elsewhere (quota, rate limit, 5xx, timeout)
// moves on to the next model of the decision's fallback list. It returns the model that
// succeeded. Errors returned by call are classified with Classify; wrap them in a
// *ProviderError to be explicit.
func (c *Client) CallWithFallback(ctx context.Context, contextName string, call func(modelID string) error) (string, error) {
	return c.CallWithFallbackOpts(ctx, contextName, ResolveOptions{}, func(_ context.Context, modelID string) (Tokens, error) {
		return Tokens{}, call(modelID)
	})
}

// CallWithFallbackOpts is CallWithFallback with resolve options (user, tier, ...) and a
// call that also returns the tokens it used, so reports carry usage and cost.
func (c *Client) CallWithFallbackOpts(ctx context.Context, contextName string, opts ResolveOptions,
	call func(ctx context.Context, modelID string) (Tokens, error)) (string, error) {
	decision, err := c.Resolve(ctx, contextName, opts)
	if err != nil {
		return "", fmt.Errorf("modelroute: resolve %s: %w", contextName, err)
	}
	chain := append([]string{decision.GetModelId()}, decision.GetFallbackModelIds()...)
	failed := &AllModelsFailedError{Context: contextName}
	for _, modelID := range chain {
		start := time.Now()
		tokens, callErr := call(ctx, modelID)
		u := Usage{
			DecisionID: decision.GetDecisionId(), Context: contextName, ModelID: modelID,
			UserID: opts.UserID, Tier: opts.Tier,
			InputTokens: tokens.Input, OutputTokens: tokens.Output,
			Latency: time.Since(start), Outcome: pb.Outcome_OUTCOME_OK,
		}
		if callErr != nil {
			cls := Classify(callErr)
			u.Outcome, u.RetryAfter, u.ProviderWide = cls.Outcome, cls.RetryAfter, cls.ProviderWide
			u.ErrorMessage = truncate(callErr.Error(), 2000)
		}
		c.reportBestEffort(ctx, u)
		if callErr == nil {
			return modelID, nil
		}
		failed.Attempts = append(failed.Attempts, Attempt{ModelID: modelID, Outcome: u.Outcome, Err: callErr})
		// Stop when the caller gave up, or when another model would fail the same way.
		if ctx.Err() != nil || !worthFallback(u.Outcome) {
			break
		}
	}
	return "", failed
}

// reportBestEffort sends one report. It uses a context detached from ctx's
// cancellation (bounded by its own timeout) so that a call that timed out still
// gets its TIMEOUT report through.
func (c *Client) reportBestEffort(ctx context.Context, u Usage) {
	rctx, cancel := context.WithTimeout(detached{ctx}, 5*time.Second)
	defer cancel()
	results, err := c.Report(rctx, u)
	if err == nil && len(results) == 1 && results[0].GetStatus() == pb.ReportStatus_REPORT_STATUS_REJECTED {
		err = fmt.Errorf("modelroute: report rejected: %s", results[0].GetError())
	}
	if err != nil && c.OnReportError != nil {
		c.OnReportError(err)
	}
}

// worthFallback says whether another model may succeed where this one failed.
// Invalid requests and content filtering follow the prompt, not the model.
func worthFallback(o pb.Outcome) bool {
	switch o {
	case pb.Outcome_OUTCOME_INVALID_REQUEST, pb.Outcome_OUTCOME_CONTENT_FILTERED:
		return false
	}
	return true
}

// detached keeps ctx's values (e.g. trace context) but not its deadline or cancellation.
// (context.WithoutCancel arrived in Go 1.21; Debian 12 ships 1.19.)
type detached struct{ parent context.Context }

func (d detached) Deadline() (time.Time, bool)       { return time.Time{}, false }
func (d detached) Done() <-chan struct{}             { return nil }
func (d detached) Err() error                        { return nil }
func (d detached) Value(key interface{}) interface{} { return d.parent.Value(key) }

func newReportID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on supported platforms; a time-based id still
		// keeps reports distinct if it ever does.
		return fmt.Sprintf("go-%d", time.Now().UnixNano())
	}
	return hex.EncodeToString(b[:])
}

// truncate cuts s to at most n bytes on a rune boundary (proto strings must stay valid UTF-8).
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
