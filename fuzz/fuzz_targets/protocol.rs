//! Backend protocol messages a hostile server could send: DataRow, ErrorResponse.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgcairn::testing::{parse_data_row, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let _ = parse_data_row(data);
    let _ = ServerMessage::parse(data);
});
