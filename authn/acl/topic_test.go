package acl

import (
	"slices"
	"strings"
	"testing"
)

// refMatches is topic matching written the plain way, level by level
// with strings.Split, against which the package's walk is checked.
func refMatches(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (f[0] == "+" || f[0] == "#") {
		return false // [MQTT-4.7.2-1]
	}
	for i, level := range f {
		if level == "#" {
			return true // what is left, even nothing: a/# matches a
		}
		if i >= len(t) || (level != "+" && level != t[i]) {
			return false
		}
	}
	return len(t) == len(f)
}

func TestCoversAndMatches(t *testing.T) {
	cases := []struct {
		rule, sub string
		want      bool
	}{
		// Topic names: covering a topic is matching it.
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/#", "a", true}, // '#' matches its parent level [MQTT-4.7.1-2]
		{"a/#", "a/b/c", true},
		{"#", "a", true},
		{"+/+", "a/b", true},
		{"+", "/", false}, // two empty levels
		{"+/+", "/", true},
		{"a/+", "a/", true}, // '+' matches an empty level
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
		{"/#", "/a", true},
		{"#", "/a", true},
		// Topics beginning with '$' [MQTT-4.7.2-1].
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"$SYS/+", "$SYS/x", true},
		{"a/#", "a/$x", true}, // only the first level counts
		{"+", "$", false},
		// Filters covering filters.
		{"a/#", "a/+/b", true},
		{"a/#", "a/#", true},
		{"a/#", "a/b/#", true},
		{"#", "+/#", true},
		{"#", "#", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},   // a/# also receives a and a/b/c
		{"a/+/#", "a/#", false}, // a/# receives a, which a/+/# does not match
		{"a/b", "a/+", false},
		{"a/+/c", "a/+/+", false},
		{"+/+", "+", false},
		{"a/#", "#", false},
		{"+/#", "#", true}, // every topic has a first level
		{"+/+/#", "#", false},
		{"a/+/#", "a/#", false},
		{"#", "$SYS/#", false},
		{"+/#", "$SYS/#", false},
		{"$SYS/#", "$SYS/+", true},
		{"$SYS/#", "#", false},
		{"a/#", "a", true},
		{"a/+/#", "a/+", true},
		{"a/+/#", "a/+/#", true},
		{"a/b/#", "a/+/#", false},
	}
	for _, tc := range cases {
		if got := covers(tc.rule, tc.sub); got != tc.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tc.rule, tc.sub, got, tc.want)
		}
		if validTopicName(tc.sub) {
			if ref := refMatches(tc.rule, tc.sub); ref != tc.want {
				t.Errorf("case %q %q: the reference matcher says %v: the table is wrong", tc.rule, tc.sub, ref)
			}
		}
		if ok := checkCovers(tc.rule, tc.sub); ok != tc.want {
			t.Errorf("case %q %q: checking every topic says covers is %v", tc.rule, tc.sub, ok)
		}
	}
}

func TestIntersects(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/secret", "a/+", true},
		{"a/secret", "a/#", true},
		{"a/secret", "+/#", true},
		{"a/secret", "#", true},
		{"a/secret/x", "a/+", false},
		{"a/+/c", "a/b/+", true},
		{"a/#", "a", true},
		{"a/+/#", "a", false},
		{"a/+", "a/b/c", false},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/+", false},
		{"$SYS/#", "$SYS/+", true},
		{"+", "+", true},
		{"#", "#", true},
		{"+/+", "#", true},
		{"a//b", "a/+/b", true},
		{"/", "+/+", true},
		{"/", "+", false},
	}
	for _, tc := range cases {
		for _, pair := range [][2]string{{tc.a, tc.b}, {tc.b, tc.a}} {
			if got := intersects(pair[0], pair[1]); got != tc.want {
				t.Errorf("intersects(%q, %q) = %v, want %v", pair[0], pair[1], got, tc.want)
			}
		}
		if ok := checkIntersects(tc.a, tc.b); ok != tc.want {
			t.Errorf("case %q %q: checking every topic says intersects is %v", tc.a, tc.b, ok)
		}
	}
}

func TestValidFilterAndTopicName(t *testing.T) {
	filters := map[string]bool{
		"a/b": true, "#": true, "+": true, "a/+/b": true, "a/#": true, "/": true, "//": true, "+/+": true, "$SYS/#": true,
		"": false, "a/#/b": false, "a#": false, "a/b#": false, "a+/b": false, "+a": false, "##": false, "a/\x00": false, "#/": false,
	}
	for f, want := range filters {
		if got := validFilter(f); got != want {
			t.Errorf("validFilter(%q) = %v, want %v", f, got, want)
		}
	}
	names := map[string]bool{"a/b": true, "/": true, "$SYS/x": true, "": false, "a/+": false, "a/#": false, "a+b": false, "a\x00": false}
	for n, want := range names {
		if got := validTopicName(n); got != want {
			t.Errorf("validTopicName(%q) = %v, want %v", n, got, want)
		}
	}
}

func TestRealTopic(t *testing.T) {
	cases := []struct {
		action Action
		topic  string
		want   string
		ok     bool
	}{
		{Subscribe, "$share/g/a/#", "a/#", true},
		{Subscribe, "$share/g/$SYS/#", "$SYS/#", true},
		{Subscribe, "$queue/a/b", "a/b", true},
		{Subscribe, "$exclusive/a/+", "a/+", true},
		{Subscribe, "$share/g", "", false},    // no filter
		{Subscribe, "$share//a", "", false},   // empty group
		{Subscribe, "$share/g+/a", "", false}, // wildcard in the group [MQTT-4.8.2-2]
		{Subscribe, "$share/g/", "", false},   // empty filter
		{Subscribe, "$share/g/$share/h/a", "", false},
		{Subscribe, "$queue/$share/g/a", "", false},
		{Subscribe, "$share/g/$delayed/5/a", "a", true},
		{Subscribe, "a/#/b", "", false},
		{Subscribe, "$sharex/a", "$sharex/a", true},
		{Publish, "$delayed/10/a/b", "a/b", true},
		{Publish, "$delayed/10", "", false},
		{Publish, "$delayed/10/", "", false},
		{Publish, "$share/g/a", "$share/g/a", true}, // only subscriptions are shared
		{Publish, "a/+", "", false},
		{Publish, "", "", false},
	}
	for _, tc := range cases {
		got, ok := realTopic(tc.action, tc.topic)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("realTopic(%s, %q) = %q, %v; want %q, %v", tc.action, tc.topic, got, ok, tc.want, tc.ok)
		}
	}
}

// universe is every topic name that can tell the given filters apart:
// one level more than the deepest, each level one of their literals, an
// empty level, a fresh name and a fresh name beginning with '$'. A
// counterexample to covers or intersects deeper than that, or with other
// names, has one among these (cut after the last level the filters
// read, with unread names replaced by the fresh one).
func universe(filters ...string) []string {
	alphabet := []string{"", "z", "$z"}
	depth := 0
	for _, f := range filters {
		levels := strings.Split(f, "/")
		depth = max(depth, len(levels))
		for _, l := range levels {
			if l != "+" && l != "#" && !slices.Contains(alphabet, l) {
				alphabet = append(alphabet, l)
			}
		}
	}
	depth++
	var topics []string
	var grow func(prefix string, level int)
	grow = func(prefix string, level int) {
		for _, l := range alphabet {
			t := l
			if level > 0 {
				t = prefix + "/" + l
			}
			topics = append(topics, t)
			if level+1 < depth {
				grow(t, level+1)
			}
		}
	}
	grow("", 0)
	return topics
}

// checkCovers decides covers(r, s) by trying every topic of the
// universe: r covers s when it matches each topic s matches.
func checkCovers(r, s string) bool {
	for _, topic := range universe(r, s) {
		if refMatches(s, topic) && !refMatches(r, topic) {
			return false
		}
	}
	return true
}

// checkIntersects decides intersects(a, b) by trying every topic.
func checkIntersects(a, b string) bool {
	for _, topic := range universe(a, b) {
		if refMatches(a, topic) && refMatches(b, topic) {
			return true
		}
	}
	return false
}
