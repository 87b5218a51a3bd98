//! Replays the checked-in seeds through each target, so `cargo test` here catches a target
//! whose own checks fail on the hand-written inputs before any fuzzing.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let count = portshare_fuzz::replay_path(&dir, run).expect("the seeds are readable");
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn canon_seeds() {
    replay("canon", portshare_fuzz::canon);
}

#[test]
fn prefix_seeds() {
    replay("prefix", portshare_fuzz::prefix);
}

#[test]
fn head_seeds() {
    replay("head", portshare_fuzz::head);
}
