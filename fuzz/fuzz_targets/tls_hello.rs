//! Fuzzes the TLS ClientHello parsing the kernel programs run (ram_common::tls), on arbitrary
//! bytes: what an application in an enforced cgroup sends first on a connection.
//! Run: `cargo +nightly fuzz run tls_hello -- -max_total_time=60` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ram_common::tls::fuzzing::read_like_the_kernel(data);
});
