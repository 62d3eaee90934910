package modelroute

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/modelroute/modelroute/clients/go/gen/modelroute/v1"
)

// ProviderError is an LLM provider failure with what the provider said. Return one
// (wrapping the SDK's error) from a CallWithFallback callback to control exactly how
// the attempt is reported; otherwise Classify guesses from the error.
type ProviderError struct {
	// Outcome, when set, is reported as is. Otherwise it is derived from StatusCode.
	Outcome pb.Outcome
	// StatusCode is the provider's HTTP status (429, 503, ...), 0 if unknown.
	StatusCode int
	// RetryAfter is the provider's Retry-After, 0 if none.
	RetryAfter time.Duration
	// ProviderWide: the provider said the limit covers every one of its models.
	ProviderWide bool
	Err          error
}

func (e *ProviderError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("provider error (HTTP %d)", e.StatusCode)
	}
	return e.Err.Error()
}

// Unwrap returns the wrapped SDK error.
func (e *ProviderError) Unwrap() error { return e.Err }

// Classification is how one failed call will be reported.
type Classification struct {
	Outcome      pb.Outcome
	RetryAfter   time.Duration
	ProviderWide bool
}

// Classify maps an LLM call error to a report outcome, in this order:
//   - a *ProviderError in the chain (explicit outcome, or its HTTP status);
//   - an error with a `StatusCode() int` or `HTTPStatusCode() int` method (common in SDKs);
//   - context.DeadlineExceeded → TIMEOUT;
//   - a gRPC status (providers with gRPC APIs): RESOURCE_EXHAUSTED → quota/rate limit;
//   - the message: "quota" → QUOTA_EXCEEDED, "429"/"rate limit"/"too many requests" →
//     RATE_LIMITED;
//   - anything else → OTHER.
//
// Only QUOTA_EXCEEDED and RATE_LIMITED put the model in cooldown on the server, so the
// message rules err towards those when a provider says "quota".
func Classify(err error) Classification {
	if err == nil {
		return Classification{Outcome: pb.Outcome_OUTCOME_OK}
	}
	var pe *ProviderError
	if errors.As(err, &pe) {
		c := Classification{Outcome: pe.Outcome, RetryAfter: pe.RetryAfter, ProviderWide: pe.ProviderWide}
		if c.Outcome == pb.Outcome_OUTCOME_UNSPECIFIED {
			c.Outcome = outcomeFromHTTP(pe.StatusCode, messageOf(pe.Err))
		}
		return c
	}
	var retry time.Duration
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		retry = ra.RetryAfter()
	}
	var sc interface{ StatusCode() int }
	if errors.As(err, &sc) {
		return Classification{Outcome: outcomeFromHTTP(sc.StatusCode(), err.Error()), RetryAfter: retry}
	}
	var hc interface{ HTTPStatusCode() int }
	if errors.As(err, &hc) {
		return Classification{Outcome: outcomeFromHTTP(hc.HTTPStatusCode(), err.Error()), RetryAfter: retry}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Classification{Outcome: pb.Outcome_OUTCOME_TIMEOUT, RetryAfter: retry}
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return Classification{Outcome: outcomeFromGRPC(s.Code(), s.Message()), RetryAfter: retry}
	}
	return Classification{Outcome: outcomeFromMessage(err.Error()), RetryAfter: retry}
}

func messageOf(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func outcomeFromHTTP(code int, msg string) pb.Outcome {
	switch {
	case code == 429:
		if mentionsQuota(msg) {
			return pb.Outcome_OUTCOME_QUOTA_EXCEEDED
		}
		return pb.Outcome_OUTCOME_RATE_LIMITED
	case code == 408 || code == 504:
		return pb.Outcome_OUTCOME_TIMEOUT
	case code >= 500:
		return pb.Outcome_OUTCOME_SERVER_ERROR
	case code == 400 || code == 404 || code == 413 || code == 422:
		return pb.Outcome_OUTCOME_INVALID_REQUEST
	}
	return outcomeFromMessage(msg)
}

func outcomeFromGRPC(code codes.Code, msg string) pb.Outcome {
	switch code {
	case codes.ResourceExhausted:
		if mentionsQuota(msg) {
			return pb.Outcome_OUTCOME_QUOTA_EXCEEDED
		}
		return pb.Outcome_OUTCOME_RATE_LIMITED
	case codes.DeadlineExceeded:
		return pb.Outcome_OUTCOME_TIMEOUT
	case codes.Unavailable, codes.Internal:
		return pb.Outcome_OUTCOME_SERVER_ERROR
	case codes.InvalidArgument, codes.NotFound:
		return pb.Outcome_OUTCOME_INVALID_REQUEST
	}
	return outcomeFromMessage(msg)
}

func outcomeFromMessage(msg string) pb.Outcome {
	m := strings.ToLower(msg)
	switch {
	case mentionsQuota(m):
		return pb.Outcome_OUTCOME_QUOTA_EXCEEDED
	case strings.Contains(m, "429"), strings.Contains(m, "rate limit"), strings.Contains(m, "rate_limit"),
		strings.Contains(m, "ratelimit"), strings.Contains(m, "too many requests"):
		return pb.Outcome_OUTCOME_RATE_LIMITED
	case strings.Contains(m, "timeout"), strings.Contains(m, "timed out"), strings.Contains(m, "deadline exceeded"):
		return pb.Outcome_OUTCOME_TIMEOUT
	}
	return pb.Outcome_OUTCOME_OTHER
}

func mentionsQuota(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "quota") || strings.Contains(m, "resource_exhausted") ||
		strings.Contains(m, "resource exhausted") || strings.Contains(m, "insufficient_quota")
}
