package main

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, as HdrHistogram is: values under
// 2^subBits nanoseconds each have a bucket, and every power of two above
// is split into 2^(subBits-1) buckets, so a percentile is off by less than
// 1/2^(subBits-1) (0.8%) of its value. Recording is an index computation
// and an increment: no allocation, no sort, memory fixed at 58 KiB
// whatever the run's length.
const (
	subBits    = 8
	subCount   = 1 << subBits
	halfCount  = subCount / 2
	numBuckets = subCount + (64-subBits-1)*halfCount + halfCount
)

// histogram counts durations. The zero value is empty and ready; it is
// not safe for concurrent use: give each goroutine its own and merge.
type histogram struct {
	counts [numBuckets]uint64
	n      uint64
	max    time.Duration
}

func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits
	top := v >> shift // in [halfCount, subCount)
	return subCount + (shift-1)*halfCount + int(top) - halfCount
}

// bucketValue is the middle of bucket i, the value a percentile in it
// reports.
func bucketValue(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	shift := (i-subCount)/halfCount + 1
	top := uint64((i-subCount)%halfCount + halfCount)
	return top<<shift + 1<<(shift-1)
}

// record adds d; negative durations count as 0.
func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(uint64(max(d, 0)))]++
	h.n++
	h.max = max(h.max, d)
}

// merge adds o's counts to h.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the smallest recorded value that at least q (0 to 1)
// of the values do not exceed, within the histogram's precision, never
// above the maximum; 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(bucketValue(i)), h.max)
		}
	}
	return h.max
}

// latencySummary is what the output says of a histogram, in milliseconds.
type latencySummary struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func (h *histogram) summary() latencySummary {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	return latencySummary{P50: ms(h.quantile(0.5)), P90: ms(h.quantile(0.9)), P99: ms(h.quantile(0.99)), Max: ms(h.max)}
}
