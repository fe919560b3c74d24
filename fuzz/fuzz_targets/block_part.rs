//! Block list parts as decrypted from the repository.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgcairn::testing::BlockPart;

fuzz_target!(|data: &[u8]| {
    if let Ok(part) = BlockPart::decode(data) {
        for i in 0..part.len() {
            let _ = part.get(i);
        }
    }
});
