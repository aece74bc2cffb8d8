package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// figure is one row of the report: what it is called and how it is read
// from a run, if the run has it.
type figure struct {
	name  string
	value func(r *result) (float64, bool)
}

// figures are the rows each mode gets in the report. "hop" is the process
// between the clients and the broker (a proxy), "broker" the broker, as
// named with -pid.
var figures = map[string][]figure{
	"connect": {
		{"connects/s", func(r *result) (float64, bool) { return r.Rate, true }},
		{"p50 ms", func(r *result) (float64, bool) { return r.Latency.P50, true }},
		{"p99 ms", func(r *result) (float64, bool) { return r.Latency.P99, true }},
		{"hop CPU µs/conn", procFigure("hop", func(p procReport) float64 { return p.CPUMicrosPerOp })},
		{"broker CPU µs/conn", procFigure("broker", func(p procReport) float64 { return p.CPUMicrosPerOp })},
	},
	"pubsub": {
		{"msgs/s", func(r *result) (float64, bool) { return r.Rate, true }},
		{"MB/s", func(r *result) (float64, bool) { return r.MBPerSecond, true }},
		{"p50 ms", func(r *result) (float64, bool) { return r.Latency.P50, true }},
		{"p99 ms", func(r *result) (float64, bool) { return r.Latency.P99, true }},
		{"hop CPU µs/msg", procFigure("hop", func(p procReport) float64 { return p.CPUMicrosPerOp })},
		{"broker CPU µs/msg", procFigure("broker", func(p procReport) float64 { return p.CPUMicrosPerOp })},
	},
	"hold": {
		{"held", func(r *result) (float64, bool) { return float64(r.Held), true }},
		{"hop RSS KiB idle", procFigure("hop", func(p procReport) float64 { return float64(p.RSSBefore) / 1024 })},
		{"hop RSS bytes/conn", procFigure("hop", func(p procReport) float64 { return p.BytesPerConn })},
		{"hop fds/conn", procFigure("hop", func(p procReport) float64 { return p.FDsPerConn })},
		{"hop pipes open", procFigure("hop", func(p procReport) float64 { return float64(p.PipesAfter) })},
		{"broker RSS bytes/conn", procFigure("broker", func(p procReport) float64 { return p.BytesPerConn })},
	},
}

func procFigure(name string, read func(procReport) float64) func(r *result) (float64, bool) {
	return func(r *result) (float64, bool) {
		p, ok := r.Procs[name]
		if !ok {
			return 0, false
		}
		return read(p), true
	}
}

// ratioFlag collects -ratio A/B flags.
type ratioFlag [][2]string

func (f *ratioFlag) String() string {
	parts := make([]string, len(*f))
	for i, r := range *f {
		parts[i] = r[0] + "/" + r[1]
	}
	return strings.Join(parts, ",")
}

func (f *ratioFlag) Set(v string) error {
	a, b, ok := strings.Cut(v, "/")
	if !ok || a == "" || b == "" {
		return fmt.Errorf("%q is not TARGET/TARGET", v)
	}
	*f = append(*f, [2]string{a, b})
	return nil
}

func reportCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: mqtt-jwt-bench report [-ratio A/B]... FILE...\n"+
			"Reads the JSON lines of runs labelled with -scenario and -target and prints the median\n"+
			"of each figure per scenario and target, with the ratios asked for.\n")
		fs.PrintDefaults()
	}
	var ratios ratioFlag
	fs.Var(&ratios, "ratio", "`A/B`: add a column with target A's median over target B's (repeatable; default proxy/haproxy and proxy/direct)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	if len(ratios) == 0 {
		ratios = ratioFlag{{"proxy", "haproxy"}, {"proxy", "direct"}}
	}
	var runs []result
	for _, path := range fs.Args() {
		read, err := readResults(path)
		if err != nil {
			return err
		}
		runs = append(runs, read...)
	}
	return writeReport(stdout, runs, ratios)
}

// readResults reads the JSON lines of path, skipping lines that are not
// JSON objects (a script may interleave comments).
func readResults(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []result
	scanner := bufio.NewScanner(f)
	scanner.Buffer(nil, 1<<20)
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		if !strings.HasPrefix(text, "{") {
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(text), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		runs = append(runs, r)
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return runs, nil
}

// writeReport prints one block per scenario, in the order the runs came,
// one row per figure, one column per target with the median of its runs,
// then the ratio columns.
func writeReport(w io.Writer, runs []result, ratios ratioFlag) error {
	var scenarios, targets []string
	modes := map[string]string{} // scenario: mode
	byKey := map[[2]string][]*result{}
	minRuns, maxRuns := math.MaxInt, 0
	for i := range runs {
		r := &runs[i]
		if !slices.Contains(scenarios, r.Scenario) {
			scenarios = append(scenarios, r.Scenario)
			modes[r.Scenario] = r.Mode
		}
		if !slices.Contains(targets, r.Target) {
			targets = append(targets, r.Target)
		}
		key := [2]string{r.Scenario, r.Target}
		byKey[key] = append(byKey[key], r)
	}
	for _, rs := range byKey {
		minRuns, maxRuns = min(minRuns, len(rs)), max(maxRuns, len(rs))
	}
	if len(runs) == 0 {
		return errors.New("no runs to report")
	}
	runsText := strconv.Itoa(minRuns)
	if maxRuns != minRuns {
		runsText += " to " + strconv.Itoa(maxRuns)
	}
	fmt.Fprintf(w, "Medians of %s runs per scenario and target.\n\n", runsText)

	header := []string{"scenario", "figure"}
	header = append(header, targets...)
	for _, ratio := range ratios {
		header = append(header, ratio[0]+"/"+ratio[1])
	}
	rows := [][]string{header}
	for _, scenario := range scenarios {
		label := scenario
		for _, fig := range figures[modes[scenario]] {
			medians := map[string]float64{}
			for _, t := range targets {
				if m, ok := medianOf(byKey[[2]string{scenario, t}], fig); ok {
					medians[t] = m
				}
			}
			if len(medians) == 0 {
				continue
			}
			row := []string{label, fig.name}
			label = ""
			for _, t := range targets {
				row = append(row, formatFigure(medians, t))
			}
			for _, ratio := range ratios {
				a, okA := medians[ratio[0]]
				b, okB := medians[ratio[1]]
				if okA && okB && b != 0 {
					row = append(row, fmt.Sprintf("%.2f", a/b))
				} else {
					row = append(row, "-")
				}
			}
			rows = append(rows, row)
		}
	}
	return writeTable(w, rows)
}

// writeTable prints rows in columns: the first two (names) aligned left,
// the rest (numbers) aligned right.
func writeTable(w io.Writer, rows [][]string) error {
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		for i, cell := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			switch {
			case i < 2:
				b.WriteString(cell + pad + "  ")
			default:
				b.WriteString("  " + pad + cell)
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// medianOf is the median of fig over the runs that have it.
func medianOf(runs []*result, fig figure) (float64, bool) {
	var values []float64
	for _, r := range runs {
		if v, ok := fig.value(r); ok {
			values = append(values, v)
		}
	}
	return median(values)
}

// median of values: the middle one, or the mean of the middle two; false
// when there are none.
func median(values []float64) (float64, bool) {
	if len(values) == 0 {
		return 0, false
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	mid := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[mid], true
	}
	return (sorted[mid-1] + sorted[mid]) / 2, true
}

// formatFigure prints target's median with the digits that matter at its
// size, or "-" when it has none.
func formatFigure(medians map[string]float64, target string) string {
	v, ok := medians[target]
	switch {
	case !ok:
		return "-"
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}
