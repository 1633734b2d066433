// Go twin of benches/net.rs: a 64-byte echo round trip on one connection
// (p50, p99, p99.9), then 64 connections pipelined (throughput), server
// and client in one process on 127.0.0.1.
//
//	cd benches/go/net && go run .
package main

import (
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"time"
)

const (
	msg       = 64
	rttWarmup = 2000
	rttN      = 50000
	conns     = 64
	perConn   = 80000
)

func server() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetNoDelay(true)
			go func(c net.Conn) {
				buf := make([]byte, 64*1024)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}(c)
		}
	}()
	return l.Addr().String()
}

func rtt(addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	c.(*net.TCPConn).SetNoDelay(true)
	m := make([]byte, msg)
	back := make([]byte, msg)
	var ds []time.Duration
	for i := 0; i < rttWarmup+rttN; i++ {
		t := time.Now()
		if _, err := c.Write(m); err != nil {
			panic(err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			panic(err)
		}
		if i >= rttWarmup {
			ds = append(ds, time.Since(t))
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	q := func(f float64) float64 { return float64(ds[int(f*float64(len(ds)-1))].Nanoseconds()) / 1e3 }
	fmt.Printf("go net/rtt        1 connection, %d B echo, %d round trips: p50 %.1f µs  p99 %.1f µs  p99.9 %.1f µs\n",
		msg, rttN, q(0.5), q(0.99), q(0.999))
}

func pipelined(addr string) {
	t := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			panic(err)
		}
		c.(*net.TCPConn).SetNoDelay(true)
		wg.Add(1)
		go func() {
			batch := make([]byte, msg*16)
			for k := 0; k < perConn/16; k++ {
				if _, err := c.Write(batch); err != nil {
					panic(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 64*1024)
			left := (perConn / 16) * 16 * msg
			for left > 0 {
				n := len(buf)
				if left < n {
					n = left
				}
				r, err := c.Read(buf[:n])
				if err != nil {
					panic(err)
				}
				left -= r
			}
		}()
	}
	wg.Wait()
	secs := time.Since(t).Seconds()
	msgs := float64(conns * (perConn / 16) * 16)
	fmt.Printf("go net/pipelined  %d connections x %d messages of %d B: %.2f M msg/s, %.1f MB/s each way (%.2f s)\n",
		conns, perConn/16*16, msg, msgs/secs/1e6, msgs*msg/secs/1e6, secs)
}

func main() {
	addr := server()
	rtt(addr)
	time.Sleep(10 * time.Millisecond)
	pipelined(addr)
}
