// Twin of `pingpong/1P` and `pingpong/2P` in benches/chan.rs: unbuffered
// ping-pong between two goroutines, nanoseconds per round trip, median of 7
// runs after one warm-up. Run: cd benches/go/chan && go run ./pingpong
package main

import (
	"fmt"
	"runtime"
	"sort"
	"time"
)

const n = 200000
const runs = 7

func once() float64 {
	ping := make(chan uint32)
	pong := make(chan uint32)
	done := make(chan struct{})
	go func() {
		for v := range ping {
			pong <- v
		}
		close(done)
	}()
	ping <- 0
	<-pong
	t := time.Now()
	for i := uint32(0); i < n; i++ {
		ping <- i
		<-pong
	}
	ns := float64(time.Since(t).Nanoseconds()) / n
	close(ping)
	<-done
	return ns
}

func main() {
	fmt.Printf("%-14s %12s %12s %12s  %-16s notes\n", "bench", "median", "min", "max", "unit")
	for _, procs := range []int{1, 2} {
		runtime.GOMAXPROCS(procs)
		once()
		v := make([]float64, runs)
		for i := range v {
			v[i] = once()
		}
		sort.Float64s(v)
		fmt.Printf("%-14s %12.1f %12.1f %12.1f  %-16s %s\n", fmt.Sprintf("pingpong/%dP", procs), v[runs/2], v[0], v[runs-1], "ns/roundtrip", runtime.Version())
	}
}
