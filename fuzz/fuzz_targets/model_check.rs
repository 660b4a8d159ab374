//! A model file's hyper-parameters, tensor table and tokenizer checked as
//! loading checks them, without running it: hostile values give a one-line
//! error, never a panic, an abort or an allocation sized by the file.
#![no_main]

use infllm::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: infllm_fuzz::seed_corpus("model_check", infllm_fuzz::seeds::models), |data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        if let Err(e) = infllm::model::check(&f) {
            infllm_fuzz::assert_one_line(&e);
        }
    }
});
