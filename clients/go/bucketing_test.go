package modelroute_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	modelroute "github.com/modelroute/modelroute/clients/go"
	pb "github.com/modelroute/modelroute/clients/go/gen/modelroute/v1"
)

// TestBucketingVectors checks the shared vectors (tests/vectors/bucketing.json), which
// every language's client and the server's resolver must agree on.
func TestBucketingVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "tests", "vectors", "bucketing.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vectors struct {
		Buckets int `json:"buckets"`
		Cases   []struct {
			ExperimentID string `json:"experiment_id"`
			UnitID       string `json:"unit_id"`
			Weights      []int  `json:"weights"`
			Bucket       int    `json:"bucket"`
			VariantIndex int    `json:"variant_index"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	if vectors.Buckets != modelroute.Buckets || len(vectors.Cases) == 0 {
		t.Fatalf("vectors: %d buckets, %d cases", vectors.Buckets, len(vectors.Cases))
	}
	for _, c := range vectors.Cases {
		b := modelroute.Bucket(c.ExperimentID, c.UnitID)
		v := modelroute.VariantIndex(b, c.Weights)
		if b != c.Bucket || v != c.VariantIndex {
			t.Errorf("%q/%q %v: bucket %d variant %d, want %d %d",
				c.ExperimentID, c.UnitID, c.Weights, b, v, c.Bucket, c.VariantIndex)
		}
	}
}

// TestBucketingMatchesTheServer runs an experiment on a real server and checks that
// the variant it serves each user is the one Bucket/VariantIndex predict.
func TestBucketingMatchesTheServer(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := ctxT(t)
	const exp = "go-client-exp"
	s.etcdctl(t, "put", "/modelroute/experiments/"+exp, `{"context":"rag.answer","variants":[`+
		`{"id":"a","model":"gemini-3-flash-preview","weight":30},{"id":"b","model":"gpt-4o-mini","weight":70}],`+
		`"start":"2020-01-01T00:00:00Z","end":"2099-01-01T00:00:00Z","bucket_by":"USER","enabled":true}`)
	eventually(t, 10*time.Second, func() error {
		d, err := s.Client.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{UserID: "probe", Tier: "free"})
		if err != nil {
			return err
		}
		if d.GetReason() != pb.Reason_REASON_EXPERIMENT {
			return fmt.Errorf("reason %s", d.GetReason())
		}
		return nil
	})
	variants := []string{"a", "b"}
	seen := map[string]bool{}
	for i := 0; i < 40; i++ {
		user := fmt.Sprintf("user-%d", i)
		d, err := s.Client.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{UserID: user, Tier: "free"})
		if err != nil {
			t.Fatal(err)
		}
		want := variants[modelroute.VariantIndex(modelroute.Bucket(exp, user), []int{30, 70})]
		if d.GetExperimentId() != exp || d.GetVariantId() != want {
			t.Errorf("%s: served %s/%s, predicted %s/%s", user, d.GetExperimentId(), d.GetVariantId(), exp, want)
		}
		seen[d.GetVariantId()] = true
	}
	if len(seen) != 2 {
		t.Errorf("40 users all landed in %v: bucketing looks broken", seen)
	}
}
