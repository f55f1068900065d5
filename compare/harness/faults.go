package harness

import (
	"context"
	"fmt"
	"strings"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// proxies puts a real TCP proxy (toxiproxy, as a library) in front of every
// member of a store, so that the network between lockd and the store can be
// cut or slowed.
type proxies struct {
	ps []*toxiproxy.Proxy
}

func newProxies(upstreams []string) (*proxies, error) {
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := &proxies{}
	for i, up := range upstreams {
		px := toxiproxy.NewProxy(srv, fmt.Sprint("member-", i), "127.0.0.1:0", up)
		if err := px.Start(); err != nil {
			p.close()
			return nil, err
		}
		p.ps = append(p.ps, px)
	}
	return p, nil
}

// addrs are the proxies' listen addresses, in member order.
func (p *proxies) addrs() []string {
	var out []string
	for _, px := range p.ps {
		out = append(out, px.Listen)
	}
	return out
}

// add puts the same toxic, in both directions, on every proxy.
func (p *proxies) add(name, typ, attrs string) error {
	for _, px := range p.ps {
		for _, stream := range []string{"upstream", "downstream"} {
			js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":%s}`, name+"_"+stream, typ, stream, attrs)
			if _, err := px.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				return fmt.Errorf("toxic %s on %s: %w", name, px.Name, err)
			}
		}
	}
	return nil
}

// addDown puts a toxic on the downstream (server → client) direction only.
func (p *proxies) addDown(name, typ, attrs string) error {
	for _, px := range p.ps {
		js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":"downstream","toxicity":1,"attributes":%s}`, name+"_downstream", typ, attrs)
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			return fmt.Errorf("toxic %s on %s: %w", name, px.Name, err)
		}
	}
	return nil
}

func (p *proxies) remove(name string) {
	for _, px := range p.ps {
		for _, stream := range []string{"upstream", "downstream"} {
			_ = px.Toxics.RemoveToxic(context.Background(), name+"_"+stream)
		}
	}
}

func (p *proxies) close() {
	for _, px := range p.ps {
		px.Stop()
	}
}
