package upstream

import (
	"math"

	"github.com/cespare/xxhash/v2"
)

// inlineServers is how many servers Pick ranks without allocating.
const inlineServers = 16

// Pick appends to dst the servers that are up, in the order to try them:
// the one the balance chooses for clientID first, then the others in the
// balance's order (for ClientID, where clientID would go with each server
// before it gone; for LeastConnections, the least loaded; for RoundRobin,
// the next turns). It returns an error wrapping ErrNoServerUp, and dst
// unchanged, when every server is down. With dst's capacity enough for
// the pool's servers, and at most 16 servers, it allocates nothing.
func (p *Pool[T]) Pick(clientID string, dst []*Backend[T]) ([]*Backend[T], error) {
	s := p.set.Load()
	n := len(s.backends)
	// Each candidate's rank: the higher key first, then the lower tie.
	var keyBuf [inlineServers]float64
	var tieBuf [inlineServers]int
	keys, ties := keyBuf[:0], tieBuf[:0]
	if n > inlineServers {
		keys, ties = make([]float64, 0, n), make([]int, 0, n)
	}
	start := len(dst)

	balance := s.balance
	if balance == ClientID && clientID == "" {
		balance = LeastConnections
	}
	switch balance {
	case ClientID:
		id := xxhash.Sum64String(clientID)
		for i, b := range s.backends {
			if b.up.Load() {
				dst = append(dst, b)
				if s.equalWeights {
					// The score grows with the hash: rank by the hash
					// and spare the logarithm.
					keys = append(keys, float64(rendezvousHash(id, s.seeds[i])))
				} else {
					keys = append(keys, rendezvousScore(id, s.seeds[i], s.weights[i]))
				}
				ties = append(ties, i)
			}
		}
	case LeastConnections:
		turn := int(p.turn.Add(1))
		for j := range n {
			i := (turn + j) % n
			if b := s.backends[i]; b.up.Load() {
				dst = append(dst, b)
				// (active+1)/weight, HAProxy's: the load the server
				// would have with this client.
				keys = append(keys, -float64(b.active.Load()+1)/float64(s.weights[i]))
				ties = append(ties, j)
			}
		}
	default: // RoundRobin
		p.roundRobin.Lock()
		chosen, total := -1, 0 // chosen is an index in s
		for i, b := range s.backends {
			if b.up.Load() {
				s.current[i] += s.weights[i]
				total += s.weights[i]
				if chosen < 0 || s.current[i] > s.current[chosen] {
					chosen = i
				}
				dst = append(dst, b)
				ties = append(ties, i)
			}
		}
		if chosen >= 0 {
			s.current[chosen] -= total
			// The others in the order of the turns to come: by the
			// running weight the next pick compares, ties from the
			// server after the chosen one round the list.
			for k, i := range ties {
				keys = append(keys, float64(s.current[i]+s.weights[i]))
				if i == chosen {
					keys[k] = math.Inf(1)
				}
				ties[k] = (i - chosen - 1 + n) % n
			}
		}
		p.roundRobin.Unlock()
	}
	if len(dst) == start {
		return dst, p.noServerUp
	}
	rank(dst[start:], keys, ties)
	return dst, nil
}

// rank sorts candidates by key, highest first, then by tie, lowest
// first; keys and ties are the candidates', and are sorted with them. An
// insertion sort: a pool has a handful of servers.
func rank[B any](candidates []B, keys []float64, ties []int) {
	for i := 1; i < len(candidates); i++ {
		for j := i; j > 0 && (keys[j] > keys[j-1] || keys[j] == keys[j-1] && ties[j] < ties[j-1]); j-- {
			candidates[j], candidates[j-1] = candidates[j-1], candidates[j]
			keys[j], keys[j-1] = keys[j-1], keys[j]
			ties[j], ties[j-1] = ties[j-1], ties[j]
		}
	}
}

// serverSeed is what a server contributes to the client_id hash: a hash
// of its address, the same in every process.
func serverSeed(address string) uint64 { return xxhash.Sum64String(address) }

// rendezvousScore is a server's weighted rendezvous (highest random
// weight) score for a client identifier hashed to id: weight / -ln(u),
// with u uniform in (0, 1) from the identifier and the server together.
// The server with the highest score takes the client, each with
// probability weight / total weight; removing a server moves only the
// clients it had, and adding one takes from each the share it gets.
// Nothing here is random per process, so every proxy, before and after a
// restart, agrees.
func rendezvousScore(id, seed uint64, weight int) float64 {
	u := (float64(rendezvousHash(id, seed)) + 0.5) / (1 << 53)
	return float64(weight) / -math.Log(u)
}

// rendezvousHash is the 53 bits of the identifier and the server hashed
// together that rendezvousScore takes u from: exactly a float64's.
func rendezvousHash(id, seed uint64) uint64 { return mix64(id^seed) >> 11 }

// mix64 is the finalizer of MurmurHash3 (fmix64): a bijection whose every
// output bit depends on every input bit, so that the scores of one
// identifier with different servers are unrelated.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
