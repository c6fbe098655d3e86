//! Configuration loading from an arbitrary file: never a panic, only errors.
#![no_main]

use balance_alertd::config::{self, Sources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else { return };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    let sources = Sources { files: vec![file.path().to_path_buf()], env: Some(Default::default()) };
    let _ = config::load(&sources);
});
