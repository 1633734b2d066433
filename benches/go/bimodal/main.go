// Go twin of the servers of benches/bimodal (gosched's bimodal latency
// benchmark): one goroutine per connection, GOMAXPROCS=1. A request is 16
// bytes (id, service time in ns, little-endian); the handler spins the
// service time as CPU work (the same LCG loop as benches/bimodal/spin.rs,
// calibrated at start-up: the fastest of 15 timed runs) and replies with
// the 8-byte id. It prints "ADDR 127.0.0.1:port STEPS_PER_NS" once it
// listens; the driver (cargo bench --bench bimodal) builds it, starts it
// pinned to one CPU and runs the client against it.
//
//	cd benches/go/bimodal && go build -o ../../../target/bimodal-go-server .
package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"time"
)

// sink keeps the calibration loops' results alive (main goroutine only).
var sink uint64

//go:noinline
func lcg(x, n uint64) uint64 {
	for i := uint64(0); i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

func calibrate() float64 {
	const n = 1000000
	best := time.Duration(1 << 62)
	for i := 0; i < 15; i++ {
		t := time.Now()
		sink += lcg(1, n)
		if d := time.Since(t); d < best {
			best = d
		}
	}
	if best <= 0 {
		best = 1
	}
	return float64(n) / float64(best.Nanoseconds())
}

func handle(c net.Conn, stepsPerNs float64) {
	defer c.Close()
	req := make([]byte, 16)
	reply := make([]byte, 8)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		id := binary.LittleEndian.Uint64(req[:8])
		ns := binary.LittleEndian.Uint64(req[8:])
		runtime.KeepAlive(lcg(ns, uint64(float64(ns)*stepsPerNs)))
		binary.LittleEndian.PutUint64(reply, id)
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

func main() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	sp := calibrate()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("ADDR %s %.4f\n", l.Addr(), sp)
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		c.(*net.TCPConn).SetNoDelay(true)
		go handle(c, sp)
	}
}
