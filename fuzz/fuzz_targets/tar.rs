//! BASE_BACKUP's tar stream, cut into pieces where the first byte says.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgcairn::testing::TarReader;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else { return };
    let mut r = TarReader::new();
    for chunk in rest.chunks(piece.max(1) as usize * 8) {
        if r.feed(bytes::Bytes::copy_from_slice(chunk), &mut |_| -> Result<(), String> { Ok(()) }).is_err() {
            return;
        }
    }
    let _ = r.finish();
});
