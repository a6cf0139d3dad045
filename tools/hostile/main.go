// Command hostile is an HTTP/3 server that misbehaves on purpose, for the client's
// hostile-server tests (tests/hostile.rs). It listens on 127.0.0.1 (UDP, a free port) with
// a self-signed certificate made at start, prints one JSON line {"port":…,"pin":…} (the
// certificate's SHA-256, for the client's pinnedPeerCertSha256) and serves until its stdin
// closes, so it never outlives the test that started it.
//
// The first segment of the request path picks the behaviour ("/flood/<session>",
// "/reset-268/<session>/0", …; see handle). Arguments ride in the segment after a dash.
// A case ending in ".once" ("/reset-268.once/…") misbehaves for the first session only
// (or the first session-less request); every later one is served by the healthy "ok" case,
// so a test can check that the client's other tunnels still work.
//
// HTTP/3 is framed here by hand on quic-go's QUIC streams (QPACK from quic-go/qpack):
// quic-go's http3 package frames every response correctly and cannot be told to send an
// unknown or oversized frame, a truncated DATA frame, a 103 before the 200, a GOAWAY on one
// connection, or a push stream. What this server owes a client it still sends properly: a
// control stream with SETTINGS, HEADERS with a QPACK block (static table and literals),
// DATA frames.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// HTTP/3 frame and stream types (RFC 9114 §7.2, §6.2) and error codes (§8.1).
const (
	frameData     = 0x0
	frameHeaders  = 0x1
	frameSettings = 0x4
	frameGoaway   = 0x7
	// A reserved (grease) type, 0x1f*N+0x21: a client must ignore it (§7.2.8, §9).
	frameUnknown = 0x21

	streamControl = 0x0
	streamPush    = 0x1
	streamUnknown = 0x21

	errRequestRejected = 0x10b
)

// oneGiB is what the oversized frames declare: far more than any client should buffer.
const oneGiB = 1 << 30

func main() {
	idle := flag.Duration("idle", 30*time.Second, "QUIC max idle timeout the server offers (the black hole case relies on it)")
	flag.Parse()

	cert, pin := selfSigned()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		log.Fatal(err)
	}
	// The black hole case needs to drop packets after the handshake, which quic-go cannot be
	// asked to do: its socket is wrapped.
	sock := &holeConn{UDPConn: udp, silenced: map[string]bool{}}
	tr := &quic.Transport{Conn: sock}
	ln, err := tr.Listen(
		&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h3"}},
		&quic.Config{MaxIdleTimeout: *idle, MaxIncomingStreams: 1000, MaxIncomingUniStreams: 100},
	)
	if err != nil {
		log.Fatal(err)
	}
	ready, _ := json.Marshal(map[string]any{"port": udp.LocalAddr().(*net.UDPAddr).Port, "pin": pin})
	fmt.Println(string(ready))

	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept(context.Background())
		if err != nil {
			log.Fatal(err)
		}
		go serveConn(&conn{Conn: c, sock: sock})
	}
}

// selfSigned makes a P-256 certificate for "localhost" and returns it with the hex SHA-256
// of its DER, which is what the client pins.
func selfSigned() (tls.Certificate, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, hex.EncodeToString(sum[:])
}

// holeConn drops every packet to and from a silenced client address.
type holeConn struct {
	*net.UDPConn
	mu       sync.Mutex
	silenced map[string]bool
}

func (h *holeConn) silence(addr net.Addr) {
	h.mu.Lock()
	h.silenced[addr.String()] = true
	h.mu.Unlock()
}

func (h *holeConn) isSilenced(addr net.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.silenced[addr.String()]
}

func (h *holeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := h.UDPConn.ReadFrom(b)
		if err != nil || !h.isSilenced(addr) {
			return n, addr, err
		}
	}
}

func (h *holeConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if h.isSilenced(addr) {
		return len(b), nil
	}
	return h.UDPConn.WriteTo(b, addr)
}

// conn is one client connection and its control stream (SETTINGS, later GOAWAY).
type conn struct {
	*quic.Conn
	sock    *holeConn
	control *quic.SendStream
	mu      sync.Mutex
	// goawayID: requests on streams at or above it are refused (0: no GOAWAY sent).
	goawayID quic.StreamID
}

func serveConn(c *conn) {
	ctl, err := c.OpenUniStream()
	if err != nil {
		return
	}
	c.control = ctl
	// SETTINGS with nothing in it: QPACK without a dynamic table, no limits announced.
	_, _ = ctl.Write([]byte{streamControl, frameSettings, 0})
	// The client's control and QPACK streams: read and ignored.
	go func() {
		for {
			s, err := c.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, s) }()
		}
	}()
	for {
		s, err := c.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go serveStream(c, s)
	}
}

// request is what the server needs of a request head.
type request struct {
	method string
	path   string
	// seg: the path's segments; seg[0] names the case.
	seg []string
}

// download: this request carries the tunnel's download (a GET, or stream-one's POST with no
// session), as opposed to an upload POST (packet-up: session and seq; stream-up: session).
func (r request) download() bool { return r.method == "GET" || len(r.seg) < 2 }

func serveStream(c *conn, s *quic.Stream) {
	r := bufio.NewReader(s)
	req, err := readHead(r)
	if err != nil {
		s.CancelRead(0x101) // H3_GENERAL_PROTOCOL_ERROR
		s.CancelWrite(0x101)
		return
	}
	c.mu.Lock()
	refused := c.goawayID != 0 && s.StreamID() >= c.goawayID
	c.mu.Unlock()
	if refused {
		// What a server does with a request it announced it would not process (§5.2).
		s.CancelRead(errRequestRejected)
		s.CancelWrite(errRequestRejected)
		return
	}
	// Upload bodies are read and dropped; the case decides what goes back.
	go func() { _, _ = io.Copy(io.Discard, r) }()
	handle(c, s, req)
}

// handle answers one request according to its case. Each case says what it tests.
func handle(c *conn, s *quic.Stream, req request) {
	name, arg, _ := strings.Cut(claim(req, c, s.StreamID()), "-")
	code, _ := strconv.ParseUint(arg, 10, 62)
	hello := []byte("hello")
	switch name {
	case "ok":
		// A healthy server: the download says hello and stays open; uploads get 200.
		if !req.download() {
			headers(s, "200")
			_ = s.Close()
			return
		}
		headers(s, "200")
		data(s, hello)
	case "flood":
		// Endless download, as fast as flow control lets it go.
		headers(s, "200")
		chunk := bytes.Repeat([]byte{'x'}, 64<<10)
		for data(s, chunk) == nil {
		}
	case "status":
		// The download is refused with status `code`.
		if req.download() {
			headers(s, arg)
			_ = s.Close()
			return
		}
		headers(s, "200")
		_ = s.Close()
	case "poststatus":
		// The download is fine; every upload POST is refused with status `code`.
		if req.download() {
			headers(s, "200")
			data(s, hello)
			return
		}
		headers(s, arg)
		_ = s.Close()
	case "silent":
		// Never answers: no headers, the stream stays open.
	case "reset":
		// The download sends some data, then RESET_STREAM with `code`.
		if req.download() {
			headers(s, "200")
			data(s, bytes.Repeat([]byte{'r'}, 32<<10))
			time.Sleep(100 * time.Millisecond)
			s.CancelWrite(quic.StreamErrorCode(code))
			s.CancelRead(quic.StreamErrorCode(code))
			return
		}
		headers(s, "200")
		_ = s.Close()
	case "postreset":
		// The download is fine; every upload is reset with `code` before an answer.
		if req.download() {
			headers(s, "200")
			data(s, hello)
			return
		}
		s.CancelWrite(quic.StreamErrorCode(code))
		s.CancelRead(quic.StreamErrorCode(code))
	case "close":
		// The download sends some data, then the whole connection is closed
		// (CONNECTION_CLOSE, application error `code`).
		headers(s, "200")
		data(s, bytes.Repeat([]byte{'c'}, 32<<10))
		time.Sleep(100 * time.Millisecond)
		_ = c.CloseWithError(quic.ApplicationErrorCode(code), "hostile server closes the connection")
	case "blackhole":
		// After the handshake and this request, not one more packet either way: only the
		// client's idle timeout can notice.
		c.sock.silence(c.RemoteAddr())
	case "hugeheaders":
		// A response HEADERS frame declaring 1 GiB, whose bytes then keep coming.
		frameHead(s, frameHeaders, oneGiB)
		endless(s)
	case "badheaders":
		// A HEADERS frame whose QPACK block is garbage (refers to a dynamic table the
		// server never had).
		frame(s, frameHeaders, []byte{0x00, 0x00, 0xbf, 0xff, 0xff, 0x7f})
	case "nostatus":
		// A well-formed header block without `:status`.
		writeFields(s, qpack.HeaderField{Name: "content-type", Value: "text/plain"})
	case "bigheader":
		// A response header of `code` KiB in one well-formed block.
		writeFields(s, qpack.HeaderField{Name: ":status", Value: "200"},
			qpack.HeaderField{Name: "x-big", Value: strings.Repeat("b", int(code)<<10)})
		data(s, hello)
	case "unknownframe":
		// 200, a small frame of a reserved type (to be ignored), then the data.
		headers(s, "200")
		frame(s, frameUnknown, []byte("ignore me"))
		data(s, hello)
	case "hugeframe":
		// 200, then a frame of a reserved type declaring 1 GiB, whose bytes keep coming.
		headers(s, "200")
		frameHead(s, frameUnknown, oneGiB)
		endless(s)
	case "hugecontrol":
		// 200 and hello on the request; on the control stream, a frame of a reserved type
		// declaring 1 GiB, whose bytes keep coming.
		headers(s, "200")
		data(s, hello)
		frameHead(c.control, frameUnknown, oneGiB)
		endless(c.control)
	case "emptydata":
		// "hel", a zero-length DATA frame, "lo": the empty frame is not the end of the body.
		headers(s, "200")
		data(s, []byte("hel"))
		data(s, nil)
		data(s, []byte("lo"))
	case "truncated":
		// A DATA frame declaring 100 bytes, 5 of them, then (a moment later, so the client
		// has taken the 5 bytes) FIN: the body is cut short.
		headers(s, "200")
		frameHead(s, frameData, 100)
		_, _ = s.Write(hello)
		time.Sleep(200 * time.Millisecond)
		_ = s.Close()
	case "earlyhints":
		// 103 Early Hints before the 200 (an interim response, RFC 9114 §4.1).
		headers(s, "103")
		headers(s, "200")
		data(s, hello)
	case "trickle":
		// 200, then one byte a second for ever.
		headers(s, "200")
		for range time.Tick(time.Second) {
			if data(s, []byte{'t'}) != nil {
				return
			}
		}
	case "trickleheaders":
		// The response HEADERS frame, one byte a second.
		var b bytes.Buffer
		writeFieldsTo(&b, qpack.HeaderField{Name: ":status", Value: "200"})
		for _, x := range b.Bytes() {
			if _, err := s.Write([]byte{x}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	case "goaway":
		// 200 and hello, then GOAWAY: requests on later streams of this connection are
		// refused (H3_REQUEST_REJECTED). Sent once per connection, by a download.
		headers(s, "200")
		if !req.download() {
			_ = s.Close()
			return
		}
		data(s, hello)
		c.mu.Lock()
		if c.goawayID == 0 {
			c.goawayID = s.StreamID() + 4
			frame(c.control, frameGoaway, quicvarint.Append(nil, uint64(c.goawayID)))
		}
		c.mu.Unlock()
	case "unistream":
		// Server-initiated unidirectional streams of a reserved type (a client must read
		// and ignore them), then 200 and hello.
		for i := 0; i < 3; i++ {
			if u, err := c.OpenUniStream(); err == nil {
				_, _ = u.Write(append([]byte{streamUnknown}, bytes.Repeat([]byte{'u'}, 1000)...))
				_ = u.Close()
			}
		}
		headers(s, "200")
		data(s, hello)
	case "push":
		// A push stream the client never allowed (it sent no MAX_PUSH_ID): a connection
		// error for the client (H3_ID_ERROR). Server-initiated bidirectional streams
		// cannot be tried: the client allows none, and quic-go keeps to that limit.
		if u, err := c.OpenUniStream(); err == nil {
			_, _ = u.Write([]byte{streamPush, 0})
		}
		headers(s, "200")
		data(s, hello)
	default:
		headers(s, "404")
		_ = s.Close()
	}
}

var (
	claimMu sync.Mutex
	// claimed: for each ".once" case, the session (or stream) it misbehaves for.
	claimed = map[string]string{}
)

// claim returns the case to play for req: its first path segment, or "ok" for a ".once"
// case already claimed by another session.
func claim(req request, c *conn, id quic.StreamID) string {
	name, once := strings.CutSuffix(req.seg[0], ".once")
	if !once {
		return name
	}
	owner := fmt.Sprintf("connection %p stream %d", c, id)
	if len(req.seg) > 1 {
		owner = req.seg[1]
	}
	claimMu.Lock()
	defer claimMu.Unlock()
	if first, ok := claimed[req.seg[0]]; ok && first != owner {
		return "ok"
	}
	claimed[req.seg[0]] = owner
	return name
}

// readHead reads the request's HEADERS frame (skipping frames of unknown type before it)
// and decodes the fields it needs.
func readHead(r *bufio.Reader) (request, error) {
	for {
		ty, err := quicvarint.Read(r)
		if err != nil {
			return request{}, err
		}
		n, err := quicvarint.Read(r)
		if err != nil {
			return request{}, err
		}
		if n > 1<<20 {
			return request{}, errors.New("request header block too large")
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return request{}, err
		}
		if ty != frameHeaders {
			continue
		}
		var req request
		next := qpack.NewDecoder().Decode(p)
		for {
			f, err := next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return request{}, err
			}
			switch f.Name {
			case ":method":
				req.method = f.Value
			case ":path":
				path, _, _ := strings.Cut(f.Value, "?")
				req.path = path
			}
		}
		req.seg = strings.Split(strings.Trim(req.path, "/"), "/")
		return req, nil
	}
}

func frameHead(w io.Writer, ty, length uint64) {
	_, _ = w.Write(quicvarint.Append(quicvarint.Append(nil, ty), length))
}

func frame(w io.Writer, ty uint64, payload []byte) error {
	b := quicvarint.Append(quicvarint.Append(nil, ty), uint64(len(payload)))
	_, err := w.Write(append(b, payload...))
	return err
}

func data(w io.Writer, p []byte) error { return frame(w, frameData, p) }

func headers(w io.Writer, status string) {
	writeFields(w, qpack.HeaderField{Name: ":status", Value: status})
}

func writeFields(w io.Writer, fields ...qpack.HeaderField) {
	var b bytes.Buffer
	writeFieldsTo(&b, fields...)
	_, _ = w.Write(b.Bytes())
}

// writeFieldsTo appends one HEADERS frame carrying `fields` to b.
func writeFieldsTo(b *bytes.Buffer, fields ...qpack.HeaderField) {
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	for _, f := range fields {
		_ = enc.WriteField(f)
	}
	_ = frame(b, frameHeaders, block.Bytes())
}

// endless writes zeros until the peer stops the stream or the connection ends.
func endless(w io.Writer) {
	chunk := make([]byte, 64<<10)
	for {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
}
