//! `GoroutineBuilder`: names seen by `current_name` across migrations,
//! stack-size checks, and errors (never panics) on bad input.

use std::io::ErrorKind;
use std::time::Duration;

use gosched::{Builder, GoroutineBuilder};

#[test]
fn a_named_goroutine_keeps_its_name_across_sleeps_and_others_have_none() {
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                GoroutineBuilder::new()
                    .name(format!("w{i}"))
                    .spawn(move || {
                        for _ in 0..20 {
                            gosched::sleep(Duration::from_micros(50));
                            assert_eq!(gosched::current_name(), Some(format!("w{i}")));
                        }
                        // A child spawned plainly has no name.
                        gosched::spawn(gosched::current_name).join().unwrap()
                    })
                    .unwrap()
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), None);
        }
        assert_eq!(gosched::current_name(), None);
    });
}

#[test]
fn bad_settings_are_errors_naming_the_value() {
    let rt = Builder::new().stack_size(128 * 1024).build().unwrap();
    let e = GoroutineBuilder::new()
        .stack_size(1 << 20)
        .spawn_on(&rt, || ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("1048576"), "{e}");
    let e = GoroutineBuilder::new()
        .stack_size(0)
        .spawn_on(&rt, || ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = GoroutineBuilder::new()
        .name("bad\0name".into())
        .spawn_on(&rt, || ())
        .unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
    // Outside a goroutine, `spawn` is an error too (not a panic).
    let e = GoroutineBuilder::new().spawn(|| ()).unwrap_err();
    assert!(e.to_string().contains("outside a goroutine"), "{e}");
    // A fitting stack size works, and a panic is the join's Err.
    let h = GoroutineBuilder::new()
        .stack_size(128 * 1024)
        .spawn_on(&rt, || -> () { panic!("named boom") })
        .unwrap();
    assert!(h.join().is_err());
}
