// Go twin of benches/net_idle.rs: memory per idle connection. The server
// (this process) accepts on 127.0.0.1 and starts one goroutine per
// connection that reads into a 64-byte buffer (parked in the netpoller);
// the client is this binary started again with NET_IDLE_CLIENT set, which
// opens N connections and holds them until its stdin closes. Prints the
// growth of the server's VmRSS per connection.
//
//	cd benches/go/net && go run ./idle          # 10,000 connections
//	cd benches/go/net && NET_IDLE_N=2000 go run ./idle
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// statusBytes reads a kB field of /proc/self/status (VmRSS, RssAnon), in bytes.
func statusBytes(field string) uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l[len(field)+1:])
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func client(addr string, n int) {
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "client: connection %d of %d: %v\n", i, n, err)
			os.Exit(1)
		}
		conns = append(conns, c)
	}
	fmt.Printf("ready %d\n", len(conns))
	io.ReadAll(os.Stdin)
}

func main() {
	n := 10000
	if v := os.Getenv("NET_IDLE_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 100000 {
			fmt.Fprintf(os.Stderr, "NET_IDLE_N=%q: expected an integer in 1..=100000\n", v)
			os.Exit(2)
		}
	}
	if addr := os.Getenv("NET_IDLE_CLIENT"); addr != "" {
		client(addr, n)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var parked int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				buf := make([]byte, 64)
				atomic.AddInt64(&parked, 1)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				atomic.AddInt64(&parked, -1)
				c.Close()
			}(c)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	rss0, anon0 := statusBytes("VmRSS"), statusBytes("RssAnon")

	t := time.Now()
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "NET_IDLE_CLIENT="+l.Addr().String(), "NET_IDLE_N="+strconv.Itoa(n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		fmt.Fprintf(os.Stderr, "the client failed: %v %q\n", err, line)
		os.Exit(1)
	}
	for atomic.LoadInt64(&parked) < int64(n) {
		if time.Since(t) > 120*time.Second {
			fmt.Fprintf(os.Stderr, "only %d of %d connections served\n", atomic.LoadInt64(&parked), n)
			os.Exit(1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	setup := time.Since(t)
	time.Sleep(300 * time.Millisecond)
	runtime.GC()
	rss1, anon1 := statusBytes("VmRSS"), statusBytes("RssAnon")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)

	stdin.Close()
	cmd.Wait()
	per := func(a, b uint64) float64 { return float64(b-a) / float64(n) }
	fmt.Printf("go net/idle       %d idle connections, one parked goroutine each (client in another process): "+
		"%.0f B per connection (VmRSS %.1f -> %.1f MiB; RssAnon %.0f B per connection)\n",
		n, per(rss0, rss1), float64(rss0)/1048576, float64(rss1)/1048576, per(anon0, anon1))
	fmt.Printf("go net/idle       connected and parked in %.2f s; goroutine stacks in use %.0f B per connection, heap in use %.0f B per connection (after GC)\n",
		setup.Seconds(), float64(ms.StackInuse)/float64(n), float64(ms.HeapInuse)/float64(n))
}
