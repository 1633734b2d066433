// Go twin of benches/migration.rs: how often a goroutine resumes on
// another OS thread (M) after a cooperative point, on GOMAXPROCS=2, for
// the same five workloads (time.Sleep, unbuffered channels, sync.Mutex,
// net.Conn on loopback, runtime.Gosched). syscall.Gettid() before and
// after each call; a resumption migrated when the two differ.
//
//	cd benches/go/migration && go run .
//	MIGRATION_SECS=3 go run .
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const procs = 2

type tally struct{ calls, moved, ops uint64 }

func (t *tally) point(f func()) {
	before := syscall.Gettid()
	f()
	t.calls++
	if syscall.Gettid() != before {
		t.moved++
	}
}

func (t *tally) add(o tally) { t.calls += o.calls; t.moved += o.moved; t.ops += o.ops }

// runFor starts n goroutines running body(i, stop) until stop, lets them
// run secs, stops them and sums their tallies.
func runFor(n int, secs float64, body func(i int, stop *atomic.Bool) tally) (tally, float64) {
	var stop atomic.Bool
	res := make([]tally, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); res[i] = body(i, &stop) }(i)
	}
	t0 := time.Now()
	time.Sleep(time.Duration(secs * float64(time.Second)))
	stop.Store(true)
	wg.Wait()
	var sum tally
	for _, r := range res {
		sum.add(r)
	}
	return sum, time.Since(t0).Seconds()
}

func sleepW(secs float64) (tally, float64) {
	return runFor(16, secs, func(_ int, stop *atomic.Bool) tally {
		var t tally
		for !stop.Load() {
			t.point(func() { time.Sleep(50 * time.Microsecond) })
			t.ops++
		}
		return t
	})
}

func pingpongW(secs float64) (tally, float64) {
	return runFor(4, secs, func(_ int, stop *atomic.Bool) tally {
		ping, pong := make(chan uint64), make(chan uint64)
		echo := make(chan tally)
		go func() {
			var t tally
			for {
				var v uint64
				var ok bool
				t.point(func() { v, ok = <-ping })
				if !ok {
					break
				}
				t.point(func() { pong <- v })
			}
			echo <- t
		}()
		var t tally
		for i := uint64(0); !stop.Load(); i++ {
			t.point(func() { ping <- i })
			var v uint64
			t.point(func() { v = <-pong })
			if v != i {
				panic("pingpong: wrong value")
			}
			t.ops++
		}
		close(ping)
		t.add(<-echo)
		return t
	})
}

var sink uint64

func mutexW(secs float64) (tally, float64) {
	var mu sync.Mutex
	var counter uint64
	t, s := runFor(8, secs, func(_ int, stop *atomic.Bool) tally {
		var t tally
		for !stop.Load() {
			t.point(mu.Lock)
			// A short critical section: ~50 ns of dependent arithmetic.
			x := counter
			for k := 0; k < 16; k++ {
				x = x*6364136223846793005 + 1
			}
			sink = x
			counter++
			mu.Unlock()
			t.ops++
		}
		return t
	})
	if counter != t.ops {
		panic("mutex: lost increments")
	}
	return t, s
}

func netW(secs float64) (tally, float64) {
	const conns, msg = 16, 64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	servers := make(chan tally, conns)
	go func() {
		for i := 0; i < conns; i++ {
			c, err := l.Accept()
			if err != nil {
				panic(err)
			}
			c.(*net.TCPConn).SetNoDelay(true)
			go func(c net.Conn) {
				var t tally
				buf := make([]byte, msg)
				for {
					var err error
					t.point(func() { _, err = io.ReadFull(c, buf) })
					if err != nil {
						break
					}
					t.point(func() { _, err = c.Write(buf) })
					if err != nil {
						panic(err)
					}
				}
				c.Close()
				servers <- t
			}(c)
		}
	}()
	addr := l.Addr().String()
	clients, s := runFor(conns, secs, func(i int, stop *atomic.Bool) tally {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			panic(err)
		}
		c.(*net.TCPConn).SetNoDelay(true)
		var t tally
		buf := make([]byte, msg)
		for k := range buf {
			buf[k] = byte(i)
		}
		for !stop.Load() {
			t.point(func() { _, err = c.Write(buf) })
			if err != nil {
				panic(err)
			}
			t.point(func() { _, err = io.ReadFull(c, buf) })
			if err != nil {
				panic(err)
			}
			t.ops++
		}
		c.Close()
		return t
	})
	ops := clients.ops
	for i := 0; i < conns; i++ {
		clients.add(<-servers)
	}
	clients.ops = ops
	return clients, s
}

func yieldW(secs float64) (tally, float64) {
	return runFor(4, secs, func(_ int, stop *atomic.Bool) tally {
		var t tally
		for !stop.Load() {
			t.point(runtime.Gosched)
			t.ops++
		}
		return t
	})
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func main() {
	runtime.GOMAXPROCS(procs)
	secs := 1.0
	if s := os.Getenv("MIGRATION_SECS"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			panic("MIGRATION_SECS: seconds, e.g. 1 or 0.5")
		}
		secs = v
	}
	only := os.Getenv("MIGRATION_ONLY")
	workloads := []struct {
		name, what string
		f          func(float64) (tally, float64)
	}{
		{"sleep", "16 g x sleep(50µs)", sleepW},
		{"pingpong", "4 pairs, chan(0)", pingpongW},
		{"mutex", "8 g, one Mutex", mutexW},
		{"net", "16 conns, 64 B req/reply", netW},
		{"yield", "4 g x yield_now", yieldW},
	}
	fmt.Printf("go %s migration at cooperative points: GOMAXPROCS=%d, %g s per workload\n", runtime.Version(), procs, secs)
	fmt.Printf("load average at start: %s\n", loadavg())
	fmt.Printf("%-9s %-26s %-8s %11s %9s %10s %12s\n", "workload", "what", "mode", "resumptions", "migrated", "% migrated", "ops/s")
	for _, w := range workloads {
		if only != "" && !strings.Contains(","+only+",", ","+w.name+",") {
			continue
		}
		t, s := w.f(secs)
		fmt.Printf("%-9s %-26s %-8s %11d %9d %8.1f %% %12.0f\n", w.name, w.what, "go", t.calls, t.moved,
			100*float64(t.moved)/float64(t.calls), float64(t.ops)/s)
	}
	fmt.Printf("load average at end: %s\n", loadavg())
}
