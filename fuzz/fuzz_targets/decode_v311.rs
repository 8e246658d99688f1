//! Arbitrary bytes on an MQTT 3.1.1 connection: decode packets until the decoder wants more
//! bytes or fails; every packet must round-trip (see `gatehouse_fuzz::check_round_trip`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt::Protocol;

fuzz_target!(|data: &[u8]| {
    gatehouse_fuzz::fuzz_decode(data, Protocol::V311);
});
