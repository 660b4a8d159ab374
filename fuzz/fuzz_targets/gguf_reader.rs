//! The GGUF reader on arbitrary bytes: it returns a file whose every tensor
//! lies inside the data, or a one-line error.
#![no_main]

use infllm::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: infllm_fuzz::seed_corpus("gguf_reader", infllm_fuzz::seeds::gguf), |data: &[u8]| {
    match GgufFile::from_bytes(data.to_vec()) {
        Ok(f) => {
            for t in &f.tensors {
                assert!(f.tensor_data(t).len() <= data.len());
            }
            let _ = f.architecture();
        }
        Err(e) => infllm_fuzz::assert_one_line(&e.into()),
    }
});
