package testserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority made for one test: it issues server and
// client certificates valid for an hour and writes them as PEM files.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
	dir  string
	// CertFile is the CA certificate's PEM file: what a peer trusts.
	CertFile string
}

// Issued is a certificate and its key, in memory and on disk.
type Issued struct {
	Cert     *x509.Certificate
	TLS      tls.Certificate
	CertFile string
	KeyFile  string
}

var serial atomic.Int64

// NewCA makes a CA whose files go to dir.
func NewCA(dir string) (*CA, error) {
	key, der, err := issue("lockd test CA", nil, nil, true, nil)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: cert, key: key, der: der, dir: dir, CertFile: filepath.Join(dir, "ca.pem")}
	if err := os.WriteFile(ca.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return ca, nil
}

// TestCA is NewCA in a test's temp dir; it fails the test on error.
func TestCA(tb testing.TB) *CA {
	tb.Helper()
	ca, err := NewCA(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// Pool is a cert pool that trusts only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue signs a certificate for commonName, good for both server and client
// authentication, valid for the given IPs (and for the DNS name "localhost"
// when ips is not empty). name names its files: <name>.pem, <name>-key.pem.
func (ca *CA) Issue(name, commonName string, ips ...net.IP) (*Issued, error) {
	var dns []string
	if len(ips) > 0 {
		dns = []string{"localhost"}
	}
	key, der, err := issue(commonName, ca, dns, false, ips)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	is := &Issued{
		Cert:     cert,
		TLS:      tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert},
		CertFile: filepath.Join(ca.dir, name+".pem"),
		KeyFile:  filepath.Join(ca.dir, name+"-key.pem"),
	}
	if err := os.WriteFile(is.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(is.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return nil, err
	}
	return is, nil
}

// MustIssue is Issue that fails the test on error.
func (ca *CA) MustIssue(tb testing.TB, name, commonName string, ips ...net.IP) *Issued {
	tb.Helper()
	is, err := ca.Issue(name, commonName, ips...)
	if err != nil {
		tb.Fatal(err)
	}
	return is
}

// Loopback is the address every test server listens on.
var Loopback = net.ParseIP("127.0.0.1")

func issue(cn string, parent *CA, dns []string, isCA bool, ips []net.IP) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano() + serial.Add(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              dns,
		IPAddresses:           ips,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	signer, signerKey := tmpl, key
	if isCA {
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else if parent != nil {
		signer, signerKey = parent.Cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, nil, fmt.Errorf("testserver: issuing %q: %w", cn, err)
	}
	return key, der, nil
}
