package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func issue(t *testing.T, cn string, parent *issued, isCA bool, ips []net.IP) *issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  ips,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         isCA, BasicConstraintsValid: true,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &issued{cert: cert, key: key, der: der}
}

func (i *issued) write(t *testing.T, dir, name string) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	kb, _ := x509.MarshalECPrivateKey(i.key)
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func (i *issued) tlsCert() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{i.der}, PrivateKey: i.key}
}

// lockd over HTTPS with client certificates: a certificate the tokens file
// names gets its rights, one it does not name is refused, and a client
// without a certificate never gets past the handshake.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := issue(t, "lockd test CA", nil, true, nil)
	caPath, _ := ca.write(t, dir, "ca")
	srvCert, srvKey := issue(t, "lockd", ca, false, []net.IP{net.ParseIP("127.0.0.1")}).write(t, dir, "server")
	worker := issue(t, "worker-1", ca, false, nil)
	stranger := issue(t, "stranger", ca, false, nil)
	tokens := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(tokens, []byte(`{"tokens": [{"name": "workers", "cert_names": ["worker-1"], "prefixes": ["jobs:"], "rights": ["lock", "read"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(dir, "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t), "LOCKD_EMBED_ETCD_PEER_URL": freeURL(t),
		"LOCKD_TLS_CERT": srvCert, "LOCKD_TLS_KEY": srvKey, "LOCKD_TLS_CLIENT_CA": caPath, "LOCKD_AUTH_FILE": tokens,
	}
	base, _, stop := startInProcess(t, env)
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("lockd serves %s, want https", base)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	clientWith := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
	}
	status := func(c *http.Client, path string) int {
		t.Helper()
		resp, err := c.Post(base+path, "application/json", strings.NewReader(`{}`))
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(clientWith(worker.tlsCert()), "/v1/locks/jobs:nightly/acquire"); got != 200 {
		t.Errorf("worker-1 acquiring jobs:nightly: %d, want 200", got)
	}
	if got := status(clientWith(worker.tlsCert()), "/v1/locks/billing:x/acquire"); got != 403 {
		t.Errorf("worker-1 acquiring billing:x: %d, want 403", got)
	}
	if got := status(clientWith(stranger.tlsCert()), "/v1/locks/jobs:other/acquire"); got != 401 {
		t.Errorf("a certificate the tokens file does not name: %d, want 401", got)
	}
	if got := status(clientWith(), "/v1/locks/jobs:other/acquire"); got != -1 {
		t.Errorf("a client without a certificate got an HTTP answer (%d), want a failed handshake", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
