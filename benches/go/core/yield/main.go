// Command yield is the Go twin of benches/core.rs yield/round_trip: two
// goroutines on one P (GOMAXPROCS=1) ping-pong with runtime.Gosched; one
// round trip is one Gosched by each.
//
//	cd benches/go/core/yield && go run .
package main

import (
	"fmt"
	"runtime"
	"sort"
	"sync/atomic"
	"time"
)

const iters = 5_000_000

func main() {
	runtime.GOMAXPROCS(1)
	fmt.Printf("go Gosched round trip, %s, GOMAXPROCS=%d\n", runtime.Version(), runtime.GOMAXPROCS(0))
	var stop int32
	done := make(chan struct{})
	go func() {
		for atomic.LoadInt32(&stop) == 0 {
			runtime.Gosched()
		}
		close(done)
	}()
	runtime.Gosched() // let the partner start
	var rounds []float64
	for r := 0; r < 10; r++ {
		t := time.Now()
		for i := 0; i < iters; i++ {
			runtime.Gosched()
		}
		rounds = append(rounds, float64(time.Since(t).Nanoseconds())/iters)
	}
	atomic.StoreInt32(&stop, 1)
	<-done
	sort.Float64s(rounds)
	fmt.Printf("yield/round_trip       ns/round trip: median %.1f  min %.1f  max %.1f  (%d rounds of %d)\n",
		rounds[len(rounds)/2], rounds[0], rounds[len(rounds)-1], len(rounds), iters)
}
