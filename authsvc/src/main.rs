//! `authsvc`: the authentication service binary (being built).
fn main() {}
