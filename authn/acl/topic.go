package acl

import "strings"

// The prefixes that name a topic without being part of it, as EMQX reads
// them: a subscription to $share/GROUP/f, $queue/f or $exclusive/f
// receives what a subscription to f does, and a message published to
// $delayed/SECONDS/t is delivered to t later.
const (
	sharePrefix     = "$share/"
	queuePrefix     = "$queue/"
	exclusivePrefix = "$exclusive/"
	delayedPrefix   = "$delayed/"
)

// realTopic returns the topic (publish) or filter (subscribe) that a
// request acts on, with the prefixes above taken off, and whether the
// request is well formed: a topic name without wildcards, a valid filter,
// a $share group that is not empty and holds no wildcard. The broker
// refuses the others as protocol errors; they are denied here, so that a
// topic this package cannot read is never let through.
func realTopic(a Action, topic string) (string, bool) {
	if topic == "" || topic[0] != '$' {
		if a == Subscribe {
			return topic, validFilter(topic)
		}
		return topic, validTopicName(topic)
	}
	if a == Subscribe {
		switch {
		case strings.HasPrefix(topic, sharePrefix):
			group, filter, ok := strings.Cut(topic[len(sharePrefix):], "/")
			if !ok || group == "" || strings.ContainsAny(group, "+#") {
				return "", false
			}
			topic = filter
		case strings.HasPrefix(topic, queuePrefix):
			topic = topic[len(queuePrefix):]
		case strings.HasPrefix(topic, exclusivePrefix):
			topic = topic[len(exclusivePrefix):]
		}
		if strings.HasPrefix(topic, sharePrefix) || strings.HasPrefix(topic, queuePrefix) {
			return "", false // nested, which EMQX refuses
		}
	}
	if rest, ok := strings.CutPrefix(topic, delayedPrefix); ok {
		_, t, ok := strings.Cut(rest, "/")
		if !ok {
			return "", false // EMQX denies a $delayed topic without its interval
		}
		topic = t
	}
	if a == Subscribe {
		return topic, validFilter(topic)
	}
	return topic, validTopicName(topic)
}

// validFilter reports whether f is a topic filter: not empty, without
// U+0000, '+' only as a whole level and '#' only as the whole last level
// [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.3-1] [MQTT-4.7.3-2].
func validFilter(f string) bool {
	if f == "" {
		return false
	}
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case 0:
			return false
		case '+', '#':
			alone := (i == 0 || f[i-1] == '/') && (i == len(f)-1 || f[i+1] == '/')
			if !alone || (f[i] == '#' && i != len(f)-1) {
				return false
			}
		}
	}
	return true
}

// validTopicName reports whether t is a topic name: not empty, without
// wildcards or U+0000 [MQTT-3.3.2-2] [MQTT-4.7.3-1] [MQTT-4.7.3-2].
func validTopicName(t string) bool {
	for i := 0; i < len(t); i++ {
		switch t[i] {
		case '+', '#', 0:
			return false
		}
	}
	return t != ""
}

// wildcardFirst reports whether filter f begins with a wildcard level,
// which matches no topic beginning with '$' [MQTT-4.7.2-1].
func wildcardFirst(f string) bool { return f[0] == '+' || f[0] == '#' }

// covers reports whether every topic that filter s matches, filter r
// matches too: a subscription to s receives nothing r does not allow. A
// topic name is a filter that matches itself, so covers(r, topic) is
// whether r matches the topic. Both must be valid filters.
//
// Level by level: '#' in r covers whatever s has left, even nothing
// ("a/#" matches "a"); '+' in r covers one level of s, '+' included; a
// literal covers only itself; '#' or '+' in s is covered only by the same
// wildcard or by '#' (and a first-level "#" by "+/#" too). A topic beginning with '$' is matched by no filter
// beginning with a wildcard, so r = "#" does not cover s = "$SYS/#".
func covers(r, s string) bool {
	if s[0] == '$' && wildcardFirst(r) {
		return false
	}
	// i and j are where a level starts in r and in s; a level ends at
	// '/' or at the end. Byte by byte, without slicing: this runs for
	// every PUBLISH.
	i, j := 0, 0
	for {
		switch {
		case i < len(r) && r[i] == '#':
			return true
		case j < len(s) && s[j] == '#':
			// s goes on to any depth, r does not; but every topic has a
			// first level, so that "+/#" matches all that "#" does.
			return j == 0 && r == "+/#"
		case i < len(r) && r[i] == '+' && (i+1 == len(r) || r[i+1] == '/'):
			i++
			for j < len(s) && s[j] != '/' {
				j++
			}
		default: // a literal level of r: s's must be the same
			for i < len(r) && r[i] != '/' {
				if j == len(s) || s[j] != r[i] {
					return false
				}
				i++
				j++
			}
			if j < len(s) && s[j] != '/' {
				return false
			}
		}
		switch {
		case j == len(s): // s ends: r must end too, or go on with a final '#'
			return i == len(r) || r[i+1:] == "#"
		case i == len(r):
			return false
		}
		i++
		j++
	}
}

// intersects reports whether some topic is matched by both filters a and
// b: a subscription to b may receive a topic that a names. Both must be
// valid filters.
func intersects(a, b string) bool {
	if (a[0] == '$' && wildcardFirst(b)) || (b[0] == '$' && wildcardFirst(a)) {
		return false
	}
	for {
		al, arest, amore := strings.Cut(a, "/")
		bl, brest, bmore := strings.Cut(b, "/")
		if al == "#" || bl == "#" {
			return true
		}
		if al != "+" && bl != "+" && al != bl {
			return false
		}
		if !amore || !bmore {
			// Where one ends, the other must end too, or go on only
			// with a '#', which matches its parent level.
			return amore == bmore || (!amore && brest == "#") || (!bmore && arest == "#")
		}
		a, b = arest, brest
	}
}

// hasWildcard reports whether the valid filter f has a wildcard level.
func hasWildcard(f string) bool { return strings.ContainsAny(f, "+#") }
