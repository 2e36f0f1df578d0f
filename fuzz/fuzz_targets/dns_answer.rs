//! Fuzzes the DNS parsing code the kernel programs run (ram_common::dns), on arbitrary bytes.
//! Run: `cargo +nightly fuzz run dns_answer -- -max_total_time=60` (from the repository root,
//! with cargo-fuzz installed: `cargo install cargo-fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ram_common::dns::fuzzing::parse_like_the_kernel(data);
});
