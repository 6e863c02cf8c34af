// Command kube-testenv runs a real Kubernetes control plane for tests: an
// embedded etcd plus kube-apiserver (k8s.io/kubernetes, linked in-process) on
// free loopback ports, with RBAC and static-token authentication.
//
// Usage:
//
//	kube-testenv --dir D [--name NAME] [--user NAME[:GROUP,...]]... [--watch-pid PID]
//	             [--ready-timeout 120s] [--resume] [-v N] [-- EXTRA-KUBE-APISERVER-FLAGS...]
//
// Once the API server answers /readyz (and the "default" namespace exists) it
// writes D/kubeconfig (admin, member of system:masters) and, for every --user,
// D/kubeconfig-NAME (a token authenticating as User NAME with the given
// groups, and no permissions until a test binds a role to it). Then it prints
// exactly one line to stdout:
//
//	ready name=NAME server=https://127.0.0.1:PORT kubeconfig=D/kubeconfig pid=PID
//
// Logs go to stderr. SIGTERM or SIGINT (or the exit of --watch-pid) shuts
// down the API server, then etcd, and exits 0. D holds the state of one run
// only: etcd data and credentials from a previous run in D are discarded,
// unless --resume is given: then the previous run's etcd data, credentials and
// ports (D/ports) are reused, so the same cluster comes back at the same
// address with the same objects (a control plane restarted, as tests of
// "the API server went away and came back" need). --resume needs the same
// --user flags as that run.
//
// There is no controller manager, scheduler or kubelet: nothing creates
// EndpointSlices, deletes namespaces' contents, collects garbage or mints
// service-account tokens.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// user is one static-token identity.
type user struct {
	name   string
	groups []string
	token  string
}

type config struct {
	dir          string
	name         string
	users        []user
	watchPID     int
	readyTimeout time.Duration
	verbosity    int
	extraFlags   []string // passed to kube-apiserver verbatim (after "--")
	resume       bool
}

// userNameRE keeps user names usable as file-name suffixes.
var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]*$`)

func main() {
	cfg, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube-testenv: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "kube-testenv: %v\n", err)
		os.Exit(1)
	}
}

type userFlag struct{ users *[]user }

func (u userFlag) String() string { return "" }

func (u userFlag) Set(v string) error {
	name, groups, _ := strings.Cut(v, ":")
	if !userNameRE.MatchString(name) || name == "admin" {
		return fmt.Errorf("invalid user name %q (want [A-Za-z0-9][A-Za-z0-9._@-]*, not \"admin\")", name)
	}
	var gs []string
	for _, g := range strings.Split(groups, ",") {
		if g = strings.TrimSpace(g); g != "" {
			gs = append(gs, g)
		}
	}
	for _, existing := range *u.users {
		if existing.name == name {
			return fmt.Errorf("user %q given twice", name)
		}
	}
	*u.users = append(*u.users, user{name: name, groups: gs})
	return nil
}

func parseArgs(args []string) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("kube-testenv", flag.ContinueOnError)
	fs.StringVar(&cfg.dir, "dir", "", "run directory for kubeconfigs, certificates and etcd data (required)")
	fs.StringVar(&cfg.name, "name", "kube-testenv", "cluster name, used for the kubeconfig cluster/context")
	fs.Var(userFlag{&cfg.users}, "user", "NAME[:GROUP,...]: add a token user and write DIR/kubeconfig-NAME (repeatable)")
	fs.IntVar(&cfg.watchPID, "watch-pid", 0, "shut down when this process exits")
	fs.DurationVar(&cfg.readyTimeout, "ready-timeout", 120*time.Second, "give up when not ready after this long")
	fs.IntVar(&cfg.verbosity, "v", 0, "kube-apiserver log verbosity")
	fs.BoolVar(&cfg.resume, "resume", false, "reuse the etcd data, credentials and ports of the previous run in DIR")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	// flag stops at "--"; everything after it goes to kube-apiserver.
	cfg.extraFlags = fs.Args()
	if cfg.dir == "" {
		return nil, errors.New("--dir is required")
	}
	if !userNameRE.MatchString(cfg.name) {
		return nil, fmt.Errorf("invalid --name %q", cfg.name)
	}
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return nil, err
	}
	cfg.dir = dir
	return cfg, nil
}

func run(cfg *config) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cfg.watchPID > 0 {
		ctx = watchProcess(ctx, cfg.watchPID)
	}

	var saved *ports
	if cfg.resume {
		p, err := readPorts(cfg.dir)
		if err != nil {
			return fmt.Errorf("--resume: %w", err)
		}
		saved = &p
		// The kubeconfigs are written again once the server is ready.
		_ = os.Remove(filepath.Join(cfg.dir, "kubeconfig"))
	} else if err := prepareDir(cfg.dir); err != nil {
		return err
	}
	etcd, etcdURL, etcdPorts, err := startEtcd(ctx, filepath.Join(cfg.dir, "etcd"), saved)
	if errors.Is(err, errInterrupted) {
		return nil
	} else if err != nil {
		return err
	}
	// Stop etcd last, after the API server has finished.
	defer func() {
		etcd.Close()
		klog.Info("kube-testenv: etcd stopped")
	}()

	var creds *credentials
	if cfg.resume {
		creds, err = readCredentials(cfg)
	} else {
		creds, err = writeCredentials(cfg)
	}
	if err != nil {
		return err
	}

	// Bind the API server's port ourselves (port 0: the kernel picks a free
	// one) and hand the listener over, so concurrent instances cannot race.
	// Resuming, the previous run's port (just released: retried briefly).
	listenAddr := "127.0.0.1:0"
	if saved != nil {
		listenAddr = fmt.Sprintf("127.0.0.1:%d", saved.api)
	}
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		ln, err = net.Listen("tcp", listenAddr)
		if err == nil || saved == nil || attempt >= 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("listen for kube-apiserver: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := writePorts(cfg.dir, ports{etcdClient: etcdPorts.etcdClient, etcdPeer: etcdPorts.etcdPeer, api: port}); err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)

	apiCtx, cancelAPI := context.WithCancel(context.Background())
	defer cancelAPI()
	apiDone := make(chan error, 1)
	go func() {
		apiDone <- runAPIServer(apiCtx, cfg, creds, etcdURL, ln, port)
	}()

	// Wait for readiness, a failure, or a signal.
	readyCtx, cancelReady := context.WithTimeout(ctx, cfg.readyTimeout)
	readyErr := make(chan error, 1)
	go func() { readyErr <- waitReady(readyCtx, server, creds) }()
	select {
	case err := <-apiDone:
		cancelReady()
		return fmt.Errorf("kube-apiserver exited before it was ready: %v", err)
	case err := <-readyErr:
		cancelReady()
		if err != nil {
			// Not cancelling kube-apiserver: see exitNow.
			if ctx.Err() != nil {
				exitNow(0, "interrupted while starting")
			}
			exitNow(1, "kube-apiserver not ready after %s: %v", cfg.readyTimeout, err)
		}
	}

	if err := writeKubeconfigs(cfg, server, creds); err != nil {
		exitNow(1, "writing kubeconfigs: %v", err)
	}
	fmt.Printf("ready name=%s server=%s kubeconfig=%s pid=%d\n",
		cfg.name, server, filepath.Join(cfg.dir, "kubeconfig"), os.Getpid())

	select {
	case err := <-apiDone:
		return fmt.Errorf("kube-apiserver exited: %v", err)
	case <-ctx.Done():
	}
	stop() // a second signal now kills the process outright
	klog.Info("kube-testenv: shutting down")
	// The kubeconfig must not outlive the server it points to.
	_ = os.Remove(filepath.Join(cfg.dir, "kubeconfig"))
	cancelAPI()
	select {
	case err := <-apiDone:
		if err != nil {
			return fmt.Errorf("kube-apiserver: %w", err)
		}
		klog.Info("kube-testenv: kube-apiserver stopped")
		return nil // the deferred etcd.Close runs now
	case <-time.After(15 * time.Second):
		// Do not let a stuck graceful shutdown keep tests waiting: everything
		// runs in this process, so exiting stops it all.
		exitNow(0, "kube-apiserver did not stop within 15s; exiting anyway")
		return nil
	}
}

// exitNow exits at once, skipping deferred shutdown steps: for when the API
// server cannot be stopped gracefully (cancelling it before its post-start
// hooks finish makes them klog.Fatal) or need not be (the process exit ends
// etcd and the API server alike, and the run directory is disposable).
func exitNow(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kube-testenv: "+format+"\n", args...)
	klog.Flush()
	os.Exit(code)
}

// watchProcess returns a context cancelled when process pid no longer exists.
func watchProcess(parent context.Context, pid int) context.Context {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		defer cancel()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !processAlive(pid) {
					klog.Infof("kube-testenv: watched process %d exited", pid)
					return
				}
			}
		}
	}()
	return ctx
}

// processAlive reports whether pid exists and is not a zombie (a process
// that exited but was not reaped yet still answers kill(pid, 0)).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// Format: "pid (comm) S ...": the state follows the last ')'.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// prepareDir creates dir and removes state a previous run may have left.
func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if n == "etcd" || n == "etcd.log" || n == "pki" || n == "ports" || n == "kubeconfig" || strings.HasPrefix(n, "kubeconfig-") {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------- etcd

// errInterrupted means a signal arrived while starting: a clean stop.
var errInterrupted = errors.New("interrupted while starting")

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ports of one run, kept in DIR/ports for --resume.
type ports struct {
	etcdClient, etcdPeer, api int
}

func writePorts(dir string, p ports) error {
	return writeFileAtomic(filepath.Join(dir, "ports"), []byte(fmt.Sprintf("%d %d %d\n", p.etcdClient, p.etcdPeer, p.api)), 0o644)
}

func readPorts(dir string) (ports, error) {
	var p ports
	b, err := os.ReadFile(filepath.Join(dir, "ports"))
	if err != nil {
		return p, err
	}
	if _, err := fmt.Sscanf(string(b), "%d %d %d", &p.etcdClient, &p.etcdPeer, &p.api); err != nil {
		return p, fmt.Errorf("%s: %w", filepath.Join(dir, "ports"), err)
	}
	return p, nil
}

// startEtcd starts a single-member etcd on free loopback ports. etcd binds
// its own listeners, so a port taken between picking and binding is retried.
// Its log is etcd.log next to dataDir. With saved ports (--resume) it keeps
// dataDir and listens where the previous run did.
func startEtcd(ctx context.Context, dataDir string, saved *ports) (*embed.Etcd, string, ports, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		var clientPort, peerPort int
		if saved != nil {
			clientPort, peerPort = saved.etcdClient, saved.etcdPeer
			if attempt > 0 {
				time.Sleep(time.Second)
			}
		} else {
			if err := os.RemoveAll(dataDir); err != nil {
				return nil, "", ports{}, err
			}
			var err error
			if clientPort, err = freeLoopbackPort(); err != nil {
				return nil, "", ports{}, err
			}
			if peerPort, err = freeLoopbackPort(); err != nil {
				return nil, "", ports{}, err
			}
		}
		used := ports{etcdClient: clientPort, etcdPeer: peerPort}
		clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
		peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}

		c := embed.NewConfig()
		c.Name = "kube-testenv"
		c.Dir = dataDir
		c.ListenClientUrls = []url.URL{clientURL}
		c.AdvertiseClientUrls = []url.URL{clientURL}
		c.ListenPeerUrls = []url.URL{peerURL}
		c.AdvertisePeerUrls = []url.URL{peerURL}
		c.InitialCluster = c.InitialClusterFromName(c.Name)
		c.UnsafeNoFsync = true // test data: speed over durability
		// etcd logs JSON, including errors on every normal shutdown; keep
		// them out of the main log.
		c.LogLevel = "warn"
		c.LogOutputs = []string{filepath.Join(filepath.Dir(dataDir), "etcd.log")}

		e, err := embed.StartEtcd(c)
		if err != nil {
			lastErr = err
			if strings.Contains(err.Error(), "address already in use") {
				continue
			}
			return nil, "", ports{}, fmt.Errorf("start etcd: %w", err)
		}
		select {
		case <-e.Server.ReadyNotify():
			return e, clientURL.String(), used, nil
		case err := <-e.Err():
			e.Close()
			return nil, "", ports{}, fmt.Errorf("etcd failed: %w", err)
		case <-time.After(60 * time.Second):
			e.Close()
			return nil, "", ports{}, errors.New("etcd not ready after 60s")
		case <-ctx.Done():
			e.Close()
			return nil, "", ports{}, errInterrupted
		}
	}
	return nil, "", ports{}, fmt.Errorf("start etcd: %w", lastErr)
}

// ---------------------------------------------------------------- credentials

type credentials struct {
	caPEM      []byte
	adminToken string
	users      []user // with tokens
	certFile   string
	keyFile    string
	saKeyFile  string
	tokenFile  string
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// writeCredentials creates a CA, a serving certificate for 127.0.0.1 and
// localhost signed by it, a service-account signing key and the token file.
func writeCredentials(cfg *config) (*credentials, error) {
	pki := filepath.Join(cfg.dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	c := &credentials{
		certFile:  filepath.Join(pki, "serving.crt"),
		keyFile:   filepath.Join(pki, "serving.key"),
		saKeyFile: filepath.Join(pki, "service-account.key"),
		tokenFile: filepath.Join(pki, "tokens.csv"),
	}

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kube-testenv-ca-" + cfg.name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	c.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	// The serving chain: leaf, then CA.
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), c.caPEM...)
	if err := os.WriteFile(c.certFile, chain, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(pki, "ca.crt"), c.caPEM, 0o644); err != nil {
		return nil, err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.saKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}), 0o600); err != nil {
		return nil, err
	}

	// Token file: token,user,uid[,"group1,group2"].
	if c.adminToken, err = randomToken(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(c.tokenFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{c.adminToken, "admin", "admin", "system:masters"})
	for _, u := range cfg.users {
		if u.token, err = randomToken(); err != nil {
			f.Close()
			return nil, err
		}
		c.users = append(c.users, u)
		record := []string{u.token, u.name, u.name}
		if len(u.groups) > 0 {
			// A present but empty column would make "" a group.
			record = append(record, strings.Join(u.groups, ","))
		}
		_ = w.Write(record)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return c, nil
}

// readCredentials reads back what writeCredentials wrote in a previous run
// (--resume): the CA, and the tokens of admin and of every --user.
func readCredentials(cfg *config) (*credentials, error) {
	pki := filepath.Join(cfg.dir, "pki")
	c := &credentials{
		certFile:  filepath.Join(pki, "serving.crt"),
		keyFile:   filepath.Join(pki, "serving.key"),
		saKeyFile: filepath.Join(pki, "service-account.key"),
		tokenFile: filepath.Join(pki, "tokens.csv"),
	}
	var err error
	if c.caPEM, err = os.ReadFile(filepath.Join(pki, "ca.crt")); err != nil {
		return nil, err
	}
	f, err := os.Open(c.tokenFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	records, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.tokenFile, err)
	}
	tokens := map[string]string{}
	for _, rec := range records {
		if len(rec) >= 2 {
			tokens[rec[1]] = rec[0]
		}
	}
	if c.adminToken = tokens["admin"]; c.adminToken == "" {
		return nil, fmt.Errorf("%s: no admin token", c.tokenFile)
	}
	for _, u := range cfg.users {
		if u.token = tokens[u.name]; u.token == "" {
			return nil, fmt.Errorf("%s: user %q was not in the previous run", c.tokenFile, u.name)
		}
		c.users = append(c.users, u)
	}
	return c, nil
}

// ---------------------------------------------------------------- kube-apiserver

// runAPIServer does what `kube-apiserver` (app.NewAPIServerCommand) does,
// minus its own signal handling and with a listener we bound ourselves.
func runAPIServer(ctx context.Context, cfg *config, creds *credentials, etcdURL string, ln net.Listener, port int) error {
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + creds.certFile,
		"--tls-private-key-file=" + creds.keyFile,
		"--token-auth-file=" + creds.tokenFile,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + creds.saKeyFile,
		"--service-account-signing-key-file=" + creds.saKeyFile,
		// No controller manager: nothing would create service accounts.
		"--disable-admission-plugins=ServiceAccount",
		// The "kubernetes" Service endpoints would be 127.0.0.1, which the
		// API server itself refuses in Endpoints/EndpointSlices.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		// Shut down in ~2s even while clients hold watches open (otherwise
		// the HTTP server waits for them for --request-timeout, 60s).
		"--shutdown-send-retry-after=true",
		"--profiling=false",
		fmt.Sprintf("--v=%d", cfg.verbosity),
	}
	args = append(args, cfg.extraFlags...)

	s := options.NewServerRunOptions()
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// As kube-apiserver does: its loopback clients should not log warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = port

	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	s.GenericServerRunOptions.ComponentGlobalsRegistry.AddMetrics()
	return app.Run(ctx, completed)
}

// waitReady polls /readyz, then waits for the "default" namespace, which
// the system-namespaces controller creates shortly after start.
func waitReady(ctx context.Context, server string, creds *credentials) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(creds.caPEM)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	get := func(path string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+path, nil)
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("Authorization", "Bearer "+creds.adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, string(body), nil
	}
	lastErr := errors.New("no answer yet")
	for _, path := range []string{"/readyz", "/api/v1/namespaces/default"} {
		for {
			code, body, err := get(path)
			if err == nil && code == http.StatusOK {
				break
			}
			if err != nil {
				lastErr = fmt.Errorf("GET %s: %w", path, err)
			} else {
				lastErr = fmt.Errorf("GET %s: %d %s", path, code, strings.TrimSpace(body))
			}
			select {
			case <-ctx.Done():
				return lastErr
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------- kubeconfigs

func kubeconfigFor(cfg *config, server string, caPEM []byte, userName, token string) *clientcmdapi.Config {
	kc := clientcmdapi.NewConfig()
	cluster := clientcmdapi.NewCluster()
	cluster.Server = server
	cluster.CertificateAuthorityData = caPEM
	kc.Clusters[cfg.name] = cluster
	auth := clientcmdapi.NewAuthInfo()
	auth.Token = token
	kc.AuthInfos[userName] = auth
	ctx := clientcmdapi.NewContext()
	ctx.Cluster = cfg.name
	ctx.AuthInfo = userName
	ctx.Namespace = "default"
	kc.Contexts[cfg.name] = ctx
	kc.CurrentContext = cfg.name
	return kc
}

// writeFileAtomic writes via a temporary file and rename, so readers never
// see a partial file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// writeKubeconfigs writes the users' kubeconfigs first and the admin one
// last, so the admin kubeconfig's existence means everything is in place.
func writeKubeconfigs(cfg *config, server string, creds *credentials) error {
	for _, u := range creds.users {
		data, err := clientcmd.Write(*kubeconfigFor(cfg, server, creds.caPEM, u.name, u.token))
		if err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(cfg.dir, "kubeconfig-"+u.name), data, 0o600); err != nil {
			return err
		}
	}
	data, err := clientcmd.Write(*kubeconfigFor(cfg, server, creds.caPEM, "admin", creds.adminToken))
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(cfg.dir, "kubeconfig"), data, 0o600)
}
