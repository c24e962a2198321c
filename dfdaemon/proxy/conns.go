package proxy

import "net"

// The connections the proxy holds open (tunnels, hijacked streams), so that
// Close ends them all.

// Close ends every CONNECT tunnel and intercepted connection and drops the
// idle connections to origins. Requests in progress on other connections
// are not affected; register it with http.Server.RegisterOnShutdown, since
// a server's Shutdown does not track hijacked connections.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	if p.transport != nil {
		p.transport.CloseIdleConnections()
	}
	return nil
}

// track registers hijacked connections for Close; false once the proxy is
// closed.
func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}
