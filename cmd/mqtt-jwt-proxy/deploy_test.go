package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

const deployDir = "../../configs/deploy"

// k8sObject is the part of a Kubernetes manifest the deployment tests read.
type k8sObject struct {
	Kind string            `yaml:"kind"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					Env []struct {
						Name      string `yaml:"name"`
						ValueFrom struct {
							SecretKeyRef struct {
								Name string `yaml:"name"`
							} `yaml:"secretKeyRef"`
						} `yaml:"valueFrom"`
					} `yaml:"env"`
					ReadinessProbe k8sProbe `yaml:"readinessProbe"`
					LivenessProbe  k8sProbe `yaml:"livenessProbe"`
					Resources      struct {
						Requests map[string]string `yaml:"requests"`
					} `yaml:"resources"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

// readK8sManifest returns the objects of the example manifest by kind.
func readK8sManifest(t *testing.T) map[string]k8sObject {
	t.Helper()
	f, err := os.Open(filepath.Join(deployDir, "kubernetes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	objects := map[string]k8sObject{}
	dec := yaml.NewDecoder(f)
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubernetes.yaml: %v", err)
		}
		objects[o.Kind] = o
	}
	return objects
}

// TestKubernetesManifest checks the example manifest against the
// configuration it embeds: the configuration passes "check", the probes
// reach the admin endpoint, the secret comes from a Secret, and the grace
// period outlasts the drain.
func TestKubernetesManifest(t *testing.T) {
	objects := readK8sManifest(t)
	for _, kind := range []string{"ConfigMap", "Deployment", "Service"} {
		if _, ok := objects[kind]; !ok {
			t.Fatalf("kubernetes.yaml has no %s", kind)
		}
	}
	t.Setenv("JWT_SECRET", "c2VjcmV0LWZvci10ZXN0cw==")
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(objects["ConfigMap"].Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"check", "-config", path}, &out, &errOut); code != 0 {
		t.Fatalf("check of the ConfigMap's config.yaml exited %d: %s", code, errOut.String())
	}
	cfg, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}

	pod := objects["Deployment"].Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("the Deployment has %d containers, want 1", len(pod.Containers))
	}
	container := pod.Containers[0]
	ports := map[string]string{}
	for _, p := range container.Ports {
		ports[p.Name] = strconv.Itoa(p.ContainerPort)
	}
	secretEnv := map[string]string{}
	for _, e := range container.Env {
		secretEnv[e.Name] = e.ValueFrom.SecretKeyRef.Name
	}
	drain := cfg.Shutdown.DrainTimeout.Or(configs.DefaultDrainTimeout)
	grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second

	checks := []struct {
		name      string
		got, want string
	}{
		{"mqtt port is the listener's", ports["mqtt"], port(t, cfg.Listeners[0].Bind)},
		{"admin port is metrics.bind's", ports["admin"], port(t, cfg.Metrics.Bind)},
		{"readiness probe path", container.ReadinessProbe.HTTPGet.Path, "/readyz"},
		{"readiness probe port", container.ReadinessProbe.HTTPGet.Port, "admin"},
		{"liveness probe path", container.LivenessProbe.HTTPGet.Path, "/healthz"},
		{"liveness probe port", container.LivenessProbe.HTTPGet.Port, "admin"},
		{"secret_env comes from a Secret", secretEnv[cfg.Authentication[0].SecretEnv], "mqtt-jwt-proxy"},
		{"grace period outlasts the drain", strconv.FormatBool(grace > drain), "true"},
		{"cpu request", strconv.FormatBool(container.Resources.Requests["cpu"] != ""), "true"},
		{"memory request", strconv.FormatBool(container.Resources.Requests["memory"] != ""), "true"},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("got %q, want %q", c.got, c.want)
			}
		})
	}
}

func port(t *testing.T, hostPort string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostPort)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSystemdUnit checks the directives the unit must carry, and that it
// gives the drain time to end.
func TestSystemdUnit(t *testing.T) {
	f, err := os.Open(filepath.Join(deployDir, "mqtt-jwt-proxy.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	directives := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if key, value, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			directives[key] = append(directives[key], value)
		}
	}
	for key, want := range map[string]string{
		"Type":                  "simple",
		"DynamicUser":           "yes",
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
		"LimitNOFILE":           "1048576",
		"KillSignal":            "SIGTERM",
	} {
		if got := directives[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if reload := directives["ExecReload"]; len(reload) == 0 || reload[len(reload)-1] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload = %q, want it to end with /bin/kill -HUP $MAINPID", reload)
	}
	if start := directives["ExecStart"]; len(start) != 1 || !strings.Contains(start[0], "-config /etc/mqtt-jwt-proxy/config.yaml") {
		t.Errorf("ExecStart = %q, want it to read /etc/mqtt-jwt-proxy/config.yaml", start)
	}
	stop, err := time.ParseDuration(strings.Join(directives["TimeoutStopSec"], ""))
	if err != nil || stop <= configs.DefaultDrainTimeout {
		t.Errorf("TimeoutStopSec = %q (%v), want longer than the default drain timeout %v", directives["TimeoutStopSec"], err, configs.DefaultDrainTimeout)
	}
}

// TestStaticBuild builds the command as the Dockerfile does and checks
// that the binary is static: the image has no libc to load.
func TestStaticBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"CGO_ENABLED=0 go build",
		"./cmd/mqtt-jwt-proxy",
		"FROM scratch",
		"USER 65532:65532",
		"EXPOSE 1883 9100",
	} {
		if !bytes.Contains(dockerfile, []byte(want)) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}

	bin := filepath.Join(t.TempDir(), "mqtt-jwt-proxy")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Error("the binary names a dynamic loader (PT_INTERP): it is not static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary imports %v (%v), want no shared library", libs, err)
	}
}

// dockerImage is what the Dockerfile's final stage says about running the
// image.
type dockerImage struct {
	env        map[string]string
	entrypoint []string
	cmd        []string
}

// readDockerfile reads the final stage's ENV, ENTRYPOINT and CMD, which
// must be in exec (JSON) form: the shell form would run under /bin/sh,
// which the scratch image lacks.
func readDockerfile(t *testing.T) dockerImage {
	t.Helper()
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var img dockerImage
	for line := range strings.Lines(string(data)) {
		instruction, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch strings.ToUpper(instruction) {
		case "FROM":
			img = dockerImage{env: map[string]string{}}
		case "ENV":
			key, value, ok := strings.Cut(rest, "=")
			if !ok {
				t.Fatalf("Dockerfile: ENV %s is not KEY=VALUE", rest)
			}
			img.env[key] = value
		case "ENTRYPOINT", "CMD":
			var args []string
			if err := json.Unmarshal([]byte(rest), &args); err != nil {
				t.Fatalf("Dockerfile: %s %s is not in exec form: %v", instruction, rest, err)
			}
			if instruction == "CMD" {
				img.cmd = args
			} else {
				img.entrypoint = args
			}
		}
	}
	return img
}

// TestDockerImageCommands runs the command as the image runs it: with the
// Dockerfile's environment, its ENTRYPOINT, and either its CMD (docker run
// IMAGE) or the arguments given in its place (docker run IMAGE check).
// The documented configuration mount is a copy of the quick-start file:
// wherever the Dockerfile names the mount path, the copy's path is used.
func TestDockerImageCommands(t *testing.T) {
	img := readDockerfile(t)
	const installed, mountPath = "/usr/local/bin/mqtt-jwt-proxy", "/etc/mqtt-jwt-proxy/config.yaml"
	if len(img.entrypoint) == 0 || img.entrypoint[0] != installed {
		t.Fatalf("ENTRYPOINT %q does not start with %s, where the image installs the command", img.entrypoint, installed)
	}
	quickstart, err := os.ReadFile("../../configs/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Another port than 1883, which may be taken; JSON logs, to read them.
	config := strings.Replace(string(quickstart), `"127.0.0.1:1883"`, `"127.0.0.1:0"`, 1)
	config = strings.Replace(config, "format: console", "format: json", 1)
	mounted := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(mounted, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	mount := strings.NewReplacer(mountPath, mounted).Replace
	container := func(extraEnv []string, args ...string) *exec.Cmd {
		var argv []string
		for _, arg := range append(img.entrypoint[1:], args...) {
			argv = append(argv, mount(arg))
		}
		cmd := exec.Command(binary, argv...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "MQTT_JWT_PROXY_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		for key, value := range img.env {
			cmd.Env = append(cmd.Env, key+"="+mount(value))
		}
		cmd.Env = append(cmd.Env, extraEnv...)
		return cmd
	}

	for _, tc := range []struct {
		name    string
		args    []string
		wantOut string
	}{
		{"check", []string{"check"}, "OK (1 listeners, 1 authenticators)"},
		{"version", []string{"version"}, "mqtt-jwt-proxy "},
		{"token", []string{"token", "-secret", "secret", "-sub", "device-1"}, "eyJ"},
		{"verify", []string{"verify", seedToken}, "accepted by jwt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := container(nil, tc.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("docker run IMAGE %s: %v\n%s", strings.Join(tc.args, " "), err, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.wantOut) {
				t.Errorf("docker run IMAGE %s printed %q, want %q in it", strings.Join(tc.args, " "), stdout.String(), tc.wantOut)
			}
		})
	}

	t.Run("serve on all interfaces", func(t *testing.T) {
		cmd := container([]string{"MQTT_JWT_PROXY_BIND_HOST=0.0.0.0"}, img.cmd...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		addr := waitForLog(t, logLines(stderr), "listening")["address"].(string)
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			t.Fatalf("listening on %s, want all interfaces", addr)
		}
		if code := connackCode(t, net.JoinHostPort("127.0.0.1", port), seedToken); code != 0 {
			t.Errorf("the quick start's token got CONNACK %d, want 0", code)
		}
	})
}

// connackCode connects to addr with token as the password and returns the
// CONNACK's return code.
func connackCode(t *testing.T, addr, token string) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, ClientID: "c",
		UsernameFlag: true, Username: "any", PasswordFlag: true, Password: []byte(token)}
	raw, err := pk.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("reading CONNACK: %v", err)
	}
	return ack[3]
}

// TestLicense: LICENSE is the Apache License 2.0 word for word, as the
// Prometheus client library (a dependency) ships it, with the appendix's
// copyright line filled in.
func TestLicense(t *testing.T) {
	got, err := os.ReadFile("../../LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/prometheus/client_golang").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	standard, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "LICENSE"))
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Replace(standard, []byte("Copyright [yyyy] [name of copyright owner]"), []byte("Copyright 2026 The mqtt-jwt-proxy Authors"), 1)
	if bytes.Equal(want, standard) {
		t.Fatal("the reference text has no copyright placeholder to fill in")
	}
	if !bytes.Equal(got, want) {
		t.Error("LICENSE is not the Apache License 2.0 with the copyright line for The mqtt-jwt-proxy Authors")
	}
}
