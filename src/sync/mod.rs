//! Goroutine-aware synchronization.
