// Package tlsfiles loads the PEM files a store's TLS flags name into a
// client tls.Config, with errors that name the flags. It never dials.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Files are the PEM files of one store's TLS flags: CA, the CA to trust
// (empty: the system's roots), and a client certificate and key (both or
// neither). The *Flag fields are the flags' names, without "--", for error
// messages.
type Files struct {
	CA, Cert, Key             string
	CAFlag, CertFlag, KeyFlag string
}

// Client loads f into a client TLS config (TLS 1.2 at least).
func Client(f Files) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", f.CAFlag, err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s: no certificate in %s", f.CAFlag, f.CA)
		}
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("--%s and --%s go together: give both or neither", f.CertFlag, f.KeyFlag)
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("--%s/--%s: %w", f.CertFlag, f.KeyFlag, err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}
