//! `gatehouse-bench`: placeholder until the load generator lands (issue 6).
fn main() {}
