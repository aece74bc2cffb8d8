package revocation

import (
	"bytes"
	"hash/maphash"
	"math/bits"
	"slices"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// stringSet is a set of strings built once and then only looked up, from
// any number of goroutines: a lookup costs one hash, one step in a
// directory and a scan of a few neighbouring hashes, a handful of cache
// lines however large the set, and allocates nothing. It keeps about 12.5
// bytes per entry besides the strings themselves: each string's 64-bit
// hash, sorted; where it ends in text, which holds the strings end to end
// in the same order, so that a hash match is confirmed on the string and
// a collision never revokes a token by mistake; and the directory. See
// docs/design.md for what else was measured.
type stringSet struct {
	seed maphash.Seed
	// entries are the strings' hashes, sorted (equal hashes adjacent),
	// each with where its string ends in text: string i is
	// text[entries[i-1].end:entries[i].end], from 0 for i = 0. Together, so
	// that a match costs one cache line less.
	entries []entry
	text    string
	// dir[b] is the first entry whose hash's top bits (hash >> shift)
	// are b or more, so that the entries of b are dir[b] to dir[b+1]: about
	// entriesPerBucket of them.
	dir   []uint32
	shift uint
	// values holds a value per string, in the same order, for a set that
	// maps strings to values (issued_before); nil for a plain set.
	values []int64
}

// entry is a string's hash, in two halves so that an entry takes 12
// bytes rather than 16, and where the string ends.
type entry struct {
	hashHi, hashLo, end uint32
}

func (e *entry) hash() uint64 { return uint64(e.hashHi)<<32 | uint64(e.hashLo) }

// entriesPerBucket is about how many entries share a directory bucket: a
// few hashes, one cache line to scan, for a directory of half a byte per
// entry.
const entriesPerBucket = 8

// setBuilder gathers a set's strings, in document order, and builds it.
// The strings of all the sets of a document go into one arena, as large
// as the document (a JSON string never unquotes longer than it is
// written), so that it does not grow by copying; a key's strings are
// contiguous in it, since each key is read once, whole.
type setBuilder struct {
	arena      *[]byte
	first      uint32   // where the first string begins in the arena
	ends       []uint32 // where each string ends in the arena
	values     []int64  // a value per string, when withValues
	withValues bool
	pace       *pacer // steps at each string ended, and in build's loops
}

// begin starts the builder's strings at the end of the arena.
func (b *setBuilder) begin() { b.first = uint32(len(*b.arena)) }

// appendQuoted appends the JSON string quoted, unquoted, to the pending
// string.
func (b *setBuilder) appendQuoted(quoted jsontext.Value) (err error) {
	*b.arena, err = jsontext.AppendUnquote(*b.arena, quoted)
	return err
}

// pending is what was appended since the last string ended.
func (b *setBuilder) pending() []byte { return (*b.arena)[b.start(len(b.ends)):] }

// end ends the pending string, with value (kept when withValues).
func (b *setBuilder) end(value int64) {
	b.pace.step()
	b.ends = append(b.ends, uint32(len(*b.arena)))
	if b.withValues {
		b.values = append(b.values, value)
	}
}

// start is where the i-th string begins in the arena.
func (b *setBuilder) start(i int) uint32 {
	if i == 0 {
		return b.first
	}
	return b.ends[i-1]
}

// at is the i-th string ended.
func (b *setBuilder) at(i int) []byte { return (*b.arena)[b.start(i):b.ends[i]] }

// hashedString is a string of the builder by its index, with its hash.
type hashedString struct {
	hash  uint64
	index uint32
}

// build returns the set of the strings ended, each once, with their
// values when withValues. A string ended twice keeps its first value.
func (b *setBuilder) build() stringSet {
	s := stringSet{seed: maphash.MakeSeed()}
	n := len(b.ends)
	if n == 0 {
		return s
	}
	order := b.sorted(s.seed)

	var text strings.Builder // its String does not copy
	text.Grow(int(b.start(n) - b.first))
	s.entries = make([]entry, 0, n)
	if b.withValues {
		s.values = make([]int64, 0, n)
	}
	for i, e := range order {
		b.pace.step()
		str := b.at(int(e.index))
		if b.duplicate(order[:i], e.hash, str) {
			continue
		}
		text.Write(str)
		s.entries = append(s.entries, entry{hashHi: uint32(e.hash >> 32), hashLo: uint32(e.hash), end: uint32(text.Len())})
		if b.withValues {
			s.values = append(s.values, b.values[e.index])
		}
	}
	s.text = text.String()
	// Duplicates leave room at the ends: give it back.
	s.entries, s.values = slices.Clip(s.entries), slices.Clip(s.values)
	s.buildDir(b.pace)
	return s
}

// buildDir builds the directory of the sorted hashes: 2^k buckets, k
// such that each holds about entriesPerBucket entries.
func (s *stringSet) buildDir(p *pacer) {
	s.shift = bucketShift(len(s.entries))
	s.dir = make([]uint32, 1<<(64-s.shift)+1)
	b := 0
	for i := range s.entries {
		p.step()
		for ; b <= int(s.entries[i].hash()>>s.shift); b++ {
			s.dir[b] = uint32(i)
		}
	}
	for ; b < len(s.dir); b++ {
		s.dir[b] = uint32(len(s.entries))
	}
}

// sorted returns the builder's strings by hash, equal hashes in document
// order (so that of a string given twice the first is kept). Hashes are
// uniform: a counting sort on their top bits puts each in a bucket of
// about entriesPerBucket, which an insertion sort orders, in linear time
// where a comparison sort takes n log n (docs/design.md).
func (b *setBuilder) sorted(seed maphash.Seed) []hashedString {
	n := len(b.ends)
	shift := bucketShift(n)
	hashes := make([]uint64, n)
	starts := make([]uint32, 1<<(64-shift)+1) // starts[k+1] counts bucket k, then is where it starts
	for i := range hashes {
		b.pace.step()
		hashes[i] = maphash.Bytes(seed, b.at(i))
		starts[hashes[i]>>shift+1]++
	}
	for k := 1; k < len(starts); k++ {
		starts[k] += starts[k-1]
	}
	order := make([]hashedString, n)
	for i, h := range hashes { // in document order: a stable sort
		b.pace.step()
		k := h >> shift
		order[starts[k]] = hashedString{h, uint32(i)}
		starts[k]++
	}
	// starts[k] is now where bucket k ends, and bucket k-1's end where it
	// begins.
	begin := uint32(0)
	for _, end := range starts[:len(starts)-1] {
		b.pace.step()
		bucket := order[begin:end]
		for i := 1; i < len(bucket); i++ { // insertion sort: stable
			for j := i; j > 0 && bucket[j].hash < bucket[j-1].hash; j-- {
				bucket[j], bucket[j-1] = bucket[j-1], bucket[j]
			}
		}
		begin = end
	}
	return order
}

// bucketShift is the shift that takes a hash to its bucket in a
// directory for n entries: 2^(64 - shift) buckets of about
// entriesPerBucket entries; 64 for a single bucket (h >> 64 is 0).
func bucketShift(n int) uint { return 64 - uint(bits.Len(uint(n/entriesPerBucket))) }

// duplicate reports whether str, of hash h, is among the strings of
// before with the same hash: the end of before, which is sorted by hash.
func (b *setBuilder) duplicate(before []hashedString, h uint64, str []byte) bool {
	for i := len(before) - 1; i >= 0 && before[i].hash == h; i-- {
		if bytes.Equal(b.at(int(before[i].index)), str) {
			return true
		}
	}
	return false
}

// len is the number of strings in the set.
func (s *stringSet) len() int { return len(s.entries) }

// find returns the index of key in the set, if it is there.
func (s *stringSet) find(key string) (int, bool) {
	if len(s.entries) == 0 {
		return 0, false
	}
	h := maphash.String(s.seed, key)
	b := h >> s.shift
	for i := int(s.dir[b]); i < int(s.dir[b+1]); i++ {
		eh := s.entries[i].hash()
		if eh > h {
			break
		}
		if eh == h && s.at(i) == key {
			return i, true
		}
	}
	return 0, false
}

// at is the i-th string of the set.
func (s *stringSet) at(i int) string {
	start := uint32(0)
	if i > 0 {
		start = s.entries[i-1].end
	}
	return s.text[start:s.entries[i].end]
}
