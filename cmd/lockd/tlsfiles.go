package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// clientTLS loads what a backend's TLS flags name: ca, a PEM file of the CA
// to trust (empty: the system's roots), and a client certificate and key
// (both or neither). Errors name the flags (caFlag etc., without "--").
func clientTLS(caFlag, ca, certFlag, cert, keyFlag, key string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", caFlag, err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s: no certificate in %s", caFlag, ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("--%s and --%s go together: give both or neither", certFlag, keyFlag)
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--%s/--%s: %w", certFlag, keyFlag, err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}
