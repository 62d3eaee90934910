package modelroute_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	modelroute "github.com/modelroute/modelroute/clients/go"
	pb "github.com/modelroute/modelroute/clients/go/gen/modelroute/v1"
)

type httpErr struct{ code int }

func (e httpErr) Error() string   { return fmt.Sprintf("HTTP %d", e.code) }
func (e httpErr) StatusCode() int { return e.code }

// TestClassify pins how common provider errors are reported: only quota and rate-limit
// outcomes make the server cool the model down, so a misclassification is user-visible.
func TestClassify(t *testing.T) {
	cases := []struct {
		err  error
		want pb.Outcome
	}{
		{&modelroute.ProviderError{StatusCode: 429, Err: errors.New("Too Many Requests")}, pb.Outcome_OUTCOME_RATE_LIMITED},
		{&modelroute.ProviderError{StatusCode: 429, Err: errors.New("You exceeded your current quota")}, pb.Outcome_OUTCOME_QUOTA_EXCEEDED},
		{&modelroute.ProviderError{StatusCode: 503}, pb.Outcome_OUTCOME_SERVER_ERROR},
		{fmt.Errorf("llm: %w", httpErr{429}), pb.Outcome_OUTCOME_RATE_LIMITED},
		{httpErr{400}, pb.Outcome_OUTCOME_INVALID_REQUEST},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), pb.Outcome_OUTCOME_TIMEOUT},
		{status.Error(codes.ResourceExhausted, "Quota exceeded for metric"), pb.Outcome_OUTCOME_QUOTA_EXCEEDED},
		{status.Error(codes.Unavailable, "backend down"), pb.Outcome_OUTCOME_SERVER_ERROR},
		{errors.New("openai: 429 Too Many Requests"), pb.Outcome_OUTCOME_RATE_LIMITED},
		{errors.New("something odd"), pb.Outcome_OUTCOME_OTHER},
	}
	for _, c := range cases {
		if got := modelroute.Classify(c.err).Outcome; got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
	got := modelroute.Classify(&modelroute.ProviderError{StatusCode: 429, RetryAfter: 7 * time.Second, ProviderWide: true})
	if got.RetryAfter != 7*time.Second || !got.ProviderWide {
		t.Errorf("retry-after / provider-wide lost: %+v", got)
	}
}
