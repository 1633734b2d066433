// Twin of `mutex/8g` in benches/chan.rs: 8 goroutines each incrementing a
// shared counter 100,000 times under sync.Mutex, nanoseconds per
// lock+unlock, median of 7 runs after one warm-up.
// Run: cd benches/go/chan && go run ./mutex
package main

import (
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"
)

const per = 100000
const g = 8
const runs = 7

func once() float64 {
	var mu sync.Mutex
	counter := 0
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			start.Wait()
			for j := 0; j < per; j++ {
				mu.Lock()
				counter++
				mu.Unlock()
			}
			wg.Done()
		}()
	}
	t := time.Now()
	start.Done()
	wg.Wait()
	ns := float64(time.Since(t).Nanoseconds()) / (g * per)
	if counter != g*per {
		panic("lost increments")
	}
	return ns
}

func main() {
	once()
	v := make([]float64, runs)
	for i := range v {
		v[i] = once()
	}
	sort.Float64s(v)
	fmt.Printf("%-14s %12s %12s %12s  %-16s notes\n", "bench", "median", "min", "max", "unit")
	fmt.Printf("%-14s %12.1f %12.1f %12.1f  %-16s %d Ps, %s\n", "mutex/8g", v[runs/2], v[0], v[runs-1], "ns/lock+unlock", runtime.GOMAXPROCS(0), runtime.Version())
}
