// Command latency is the Go twin of benches/latency.rs: on one P
// (GOMAXPROCS=1) a hog goroutine spins in a loop that calls nothing, beside a
// ticker goroutine that sleeps 1 ms in a loop. It prints the ticker's
// lateness (p50/p99/p99.9/max) and the hog's iterations/s, then the hog's
// iterations/s alone (no ticker) and the ratio.
//
//	cd benches/go/latency && go run .
//	LATENCY_SECS=5 go run .
//
// Go's quantum is fixed (forcePreemptNS = 10 ms) and sysmon notices an
// overrun slice only at its next poll (20 µs .. 10 ms backoff), so expect
// lateness well above 10 ms. Asynchronous preemption must be on: with
// GODEBUG=asyncpreemptoff=1 the hog never yields and the program cannot
// end, so it refuses to start.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const tick = time.Millisecond

var stop int32

// hog spins until stop is set; the loop has no calls (the atomic load is a
// plain MOV), so only asynchronous preemption can stop it. It returns its
// iterations and how long it ran.
func hog() (uint64, time.Duration) {
	t := time.Now()
	x := uint64(1)
	n := uint64(0)
	for atomic.LoadInt32(&stop) == 0 {
		x = x*6364136223846793005 + 1442695040888963407
		n++
	}
	if x == 42 {
		fmt.Print("") // keep x alive
	}
	return n, time.Since(t)
}

// run runs the hog (and the ticker if withTicker) for d and returns the hog's
// iterations/s and the ticker's lateness samples.
func run(d time.Duration, withTicker bool) (float64, []time.Duration) {
	atomic.StoreInt32(&stop, 0)
	type hogResult struct {
		n  uint64
		el time.Duration
	}
	hres := make(chan hogResult, 1)
	tres := make(chan []time.Duration, 1)
	if withTicker {
		go func() {
			var late []time.Duration
			for atomic.LoadInt32(&stop) == 0 {
				t := time.Now()
				time.Sleep(tick)
				late = append(late, time.Since(t)-tick)
			}
			tres <- late
		}()
	}
	go func() {
		n, el := hog()
		hres <- hogResult{n, el}
	}()
	// main sleeps too: it needs the P back, which it gets by preemption.
	time.Sleep(d)
	atomic.StoreInt32(&stop, 1)
	h := <-hres
	var late []time.Duration
	if withTicker {
		late = <-tres
	}
	return float64(h.n) / h.el.Seconds(), late
}

func main() {
	if strings.Contains(os.Getenv("GODEBUG"), "asyncpreemptoff=1") {
		fmt.Fprintln(os.Stderr, "latency: needs asynchronous preemption (unset GODEBUG=asyncpreemptoff=1)")
		os.Exit(2)
	}
	secs := 2.0
	if os.Getenv("LATENCY_QUICK") == "1" {
		secs = 0.3
	}
	if v := os.Getenv("LATENCY_SECS"); v != "" {
		s, err := strconv.ParseFloat(v, 64)
		if err != nil || s <= 0 {
			fmt.Fprintf(os.Stderr, "latency: LATENCY_SECS=%q: expected a positive number of seconds\n", v)
			os.Exit(2)
		}
		secs = s
	}
	d := time.Duration(secs * float64(time.Second))
	runtime.GOMAXPROCS(1)
	fmt.Printf("go latency, %s, GOMAXPROCS=%d, one no-call hog + a 1 ms ticker, %v\n",
		runtime.Version(), runtime.GOMAXPROCS(0), d)

	alone, _ := run(d, false)
	thr, late := run(d, true)
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	q := func(p float64) float64 {
		if len(late) == 0 {
			return 0
		}
		i := int(p * float64(len(late)))
		if i >= len(late) {
			i = len(late) - 1
		}
		return float64(late[i].Nanoseconds()) / 1e6
	}
	fmt.Printf("ticker wake-ups %d, lateness p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms\n",
		len(late), q(0.5), q(0.99), q(0.999), q(1))
	fmt.Printf("hog iterations/s: with ticker %.4g, alone %.4g, ratio %.3f\n", thr, alone, thr/alone)
	// Machine-readable, for benches/latency.rs (which runs this program):
	// ticks, p50/p99/p99.9/max lateness in µs, hog iterations/s, ratio.
	fmt.Printf("CSV %d,%.1f,%.1f,%.1f,%.1f,%.6g,%.4f\n",
		len(late), q(0.5)*1e3, q(0.99)*1e3, q(0.999)*1e3, q(1)*1e3, thr, thr/alone)
}
