//! The `prefix` fuzz target: AFL++ drives it under `cargo afl`; a plain build replays the
//! files named on the command line (or standard input) through it.

#![forbid(unsafe_code)]

#[cfg(fuzzing)]
fn main() {
    afl::fuzz!(|data: &[u8]| portshare_fuzz::prefix(data));
}

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    portshare_fuzz::replay(portshare_fuzz::prefix)
}
