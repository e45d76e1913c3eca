//! Warm session versus a fresh process per prompt (being written).
fn main() {}
