package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of the CPU times in /proc/PID/stat: USER_HZ,
// which Linux fixes at 100 for user space whatever the kernel's HZ.
const clockTicks = 100

// procSample is what a process costs at one moment, read from /proc.
type procSample struct {
	RSS   int64         // resident memory, bytes
	CPU   time.Duration // user plus system time since it started, all threads
	FDs   int           // open file descriptors
	Pipes int           // of which pipes
}

// sampleProc reads pid's memory, CPU time and descriptors.
func sampleProc(pid int) (procSample, error) {
	var s procSample
	dir := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return s, fmt.Errorf("process %d: VmRSS %q: %w", pid, rest, err)
			}
			s.RSS = kb << 10
		}
	}
	if s.CPU, err = procCPU(dir + "/stat"); err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	entries, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	s.FDs = len(entries)
	for _, e := range entries {
		if target, err := os.Readlink(dir + "/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			s.Pipes++
		}
	}
	return s, nil
}

// procCPU reads utime plus stime, fields 14 and 15 of /proc/PID/stat. The
// fields are counted after the command name, which is in parentheses and
// may itself hold spaces and parentheses.
func procCPU(path string) (time.Duration, error) {
	stat, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("%s: no command name", path)
	}
	fields := strings.Fields(string(stat[end+1:]))
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return 0, fmt.Errorf("%s: %d fields", path, len(fields)+2)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// watchedProcs are the processes named with -pid: their samples are taken
// at the start and end of a run (and, in hold mode, once all connections
// are open).
type watchedProcs struct {
	names []string
	pids  []int
}

// String and Set make watchedProcs a repeatable flag: -pid NAME=PID.
func (w *watchedProcs) String() string {
	parts := make([]string, len(w.names))
	for i := range w.names {
		parts[i] = w.names[i] + "=" + strconv.Itoa(w.pids[i])
	}
	return strings.Join(parts, ",")
}

func (w *watchedProcs) Set(v string) error {
	name, num, ok := strings.Cut(v, "=")
	pid, err := strconv.Atoi(num)
	if !ok || name == "" || err != nil || pid <= 0 {
		return fmt.Errorf("%q is not NAME=PID", v)
	}
	w.names = append(w.names, name)
	w.pids = append(w.pids, pid)
	return nil
}

// sample reads every watched process.
func (w *watchedProcs) sample() ([]procSample, error) {
	samples := make([]procSample, len(w.pids))
	for i, pid := range w.pids {
		var err error
		if samples[i], err = sampleProc(pid); err != nil {
			return nil, fmt.Errorf("-pid %s: %w", w.names[i], err)
		}
	}
	return samples, nil
}

// procReport is what the JSON line says of one watched process over a run.
type procReport struct {
	PID int `json:"pid"`
	// CPUSeconds is the CPU time the process used during the run.
	CPUSeconds float64 `json:"cpu_s"`
	// CPUMicrosPerOp is CPUSeconds per connection (connect) or per message
	// delivered (pubsub).
	CPUMicrosPerOp float64 `json:"cpu_us_per_op,omitempty"`
	// The rest are set in hold mode: before is with none of the run's
	// connections, after is with all of them open.
	RSSBefore    int64   `json:"rss_before,omitempty"`
	RSSAfter     int64   `json:"rss_after,omitempty"`
	FDsBefore    int     `json:"fds_before,omitempty"`
	FDsAfter     int     `json:"fds_after,omitempty"`
	PipesAfter   int     `json:"pipes_after"`
	BytesPerConn float64 `json:"bytes_per_conn,omitempty"`
	FDsPerConn   float64 `json:"fds_per_conn,omitempty"`
	PipesPerConn float64 `json:"pipes_per_conn,omitempty"`
}

// report compares the samples taken before and after a run of ops
// operations; conns, when positive, is how many connections were open at
// after and asks for the memory and descriptor figures.
func (w *watchedProcs) report(before, after []procSample, ops int64, conns int) map[string]procReport {
	if len(w.pids) == 0 {
		return nil
	}
	out := make(map[string]procReport, len(w.pids))
	for i, name := range w.names {
		b, a := before[i], after[i]
		r := procReport{PID: w.pids[i], CPUSeconds: roundTo(a.CPU.Seconds()-b.CPU.Seconds(), 3), PipesAfter: a.Pipes}
		if ops > 0 {
			r.CPUMicrosPerOp = roundTo(float64(a.CPU-b.CPU)/1e3/float64(ops), 2)
		}
		if conns > 0 {
			r.RSSBefore, r.RSSAfter = b.RSS, a.RSS
			r.FDsBefore, r.FDsAfter = b.FDs, a.FDs
			r.BytesPerConn = roundTo(float64(a.RSS-b.RSS)/float64(conns), 0)
			r.FDsPerConn = roundTo(float64(a.FDs-b.FDs)/float64(conns), 2)
			r.PipesPerConn = roundTo(float64(a.Pipes-b.Pipes)/float64(conns), 2)
		}
		out[name] = r
	}
	return out
}
