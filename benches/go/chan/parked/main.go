// Twin of `parked/100k` in benches/chan.rs: resident memory added per
// goroutine parked in a channel receive, with 100,000 goroutines, from
// /proc/self/statm. Run: cd benches/go/chan && go run ./parked
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const n = 100000

func rss() int {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		panic(err)
	}
	pages, err := strconv.Atoi(strings.Fields(string(b))[1])
	if err != nil {
		panic(err)
	}
	return pages * os.Getpagesize()
}

func main() {
	ch := make(chan struct{})
	var parked int64
	var wg sync.WaitGroup
	before := rss()
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			atomic.AddInt64(&parked, 1)
			<-ch
			wg.Done()
		}()
	}
	for atomic.LoadInt64(&parked) < n {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	per := float64(rss()-before) / n
	close(ch)
	wg.Wait()
	fmt.Printf("%-14s %12s %12s %12s  %-16s notes\n", "bench", "median", "min", "max", "unit")
	fmt.Printf("%-14s %12.1f %12.1f %12.1f  %-16s %s\n", "parked/100k", per, per, per, "bytes/goroutine", runtime.Version())
}
