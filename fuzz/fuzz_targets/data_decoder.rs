#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| smtp_fuzz_oracles::data_decoder(data));
