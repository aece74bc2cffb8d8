package main

import (
	"math"
	"testing"
	"time"
)

func TestBucketsKeepPrecision(t *testing.T) {
	const bound = 1.0 / halfCount // the largest relative error a bucket allows
	for v := uint64(1); v < 1<<62; v = v*3/2 + 1 {
		got := bucketValue(bucketOf(v))
		if rel := math.Abs(float64(got)-float64(v)) / float64(v); rel > bound {
			t.Fatalf("%d reads back as %d: %.4f off, over %.4f", v, got, rel, bound)
		}
	}
	if i := bucketOf(math.MaxUint64); i != numBuckets-1 {
		t.Errorf("the largest value falls in bucket %d, want the last, %d", i, numBuckets-1)
	}
}

func TestQuantiles(t *testing.T) {
	uniform := func() *histogram {
		var h histogram
		for v := 1; v <= 100_000; v++ {
			h.record(time.Duration(v) * time.Microsecond)
		}
		return &h
	}
	for _, tc := range []struct {
		name string
		h    func() *histogram
		q    float64
		want time.Duration
	}{
		{"empty", func() *histogram { return &histogram{} }, 0.5, 0},
		{"one value", func() *histogram {
			var h histogram
			h.record(1234 * time.Microsecond)
			return &h
		}, 0.99, 1234 * time.Microsecond},
		{"negative counts as zero", func() *histogram {
			var h histogram
			h.record(-time.Second)
			return &h
		}, 0.5, 0},
		{"uniform p50", uniform, 0.5, 50 * time.Millisecond},
		{"uniform p90", uniform, 0.9, 90 * time.Millisecond},
		{"uniform p99", uniform, 0.99, 99 * time.Millisecond},
		{"uniform max", uniform, 1, 100 * time.Millisecond},
		{"merged halves p50", func() *histogram {
			var low, high histogram
			for v := 1; v <= 50_000; v++ {
				low.record(time.Duration(v) * time.Microsecond)
				high.record(time.Duration(v+50_000) * time.Microsecond)
			}
			low.merge(&high)
			return &low
		}, 0.5, 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.h().quantile(tc.q)
			if diff := math.Abs(float64(got - tc.want)); diff > float64(tc.want)/halfCount {
				t.Errorf("quantile(%v) = %v, want %v within %.1f%%", tc.q, got, tc.want, 100.0/halfCount)
			}
		})
	}
}

func TestSummaryIsInMilliseconds(t *testing.T) {
	var h histogram
	for range 99 {
		h.record(100 * time.Microsecond)
	}
	h.record(250 * time.Millisecond)
	s := h.summary()
	if s.P50 != 0.1 || s.P90 != 0.1 || s.Max != 250 {
		t.Errorf("summary %+v: want p50 and p90 0.1 ms, max 250 ms", s)
	}
}

func TestRecordAllocatesNothing(t *testing.T) {
	var h histogram
	if allocs := testing.AllocsPerRun(1000, func() { h.record(time.Millisecond) }); allocs != 0 {
		t.Errorf("record allocates %.0f times", allocs)
	}
}
