//! The tokenizers (SmolLM2's byte-level BPE, Gemma 3's SentencePiece) on
//! arbitrary text. The first byte picks the tokenizer (bit 0), adding BOS
//! (bit 1) and parsing special tokens (bit 2). Every id is in the
//! vocabulary, and BPE text without specials decodes back to itself, less
//! the bytes the vocabulary has no token for (SmolLM2 lacks 0x04, 0x06,
//! ...; llama.cpp drops them too: tests/tokenizer.rs).
#![no_main]

use std::sync::LazyLock;

use infllm::gguf::GgufFile;
use infllm::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

static TOKENIZERS: LazyLock<[Tokenizer; 2]> = LazyLock::new(|| {
    [
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models/gemma-3-270m-q4_k_m.gguf",
    ]
    .map(|m| {
        let f = GgufFile::open(infllm_fuzz::repo_file(m)).expect("model file");
        Tokenizer::from_gguf(&f).expect("tokenizer")
    })
});

fuzz_target!(init: {
    infllm_fuzz::seed_corpus("tokenizer", infllm_fuzz::seeds::texts);
    LazyLock::force(&TOKENIZERS);
}, |data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(bytes);
    let (bpe, add_bos, special) = (flags & 1 == 0, flags & 2 != 0, flags & 4 != 0);
    let tok = &TOKENIZERS[usize::from(!bpe)];
    let ids = tok.encode(&text, add_bos, special);
    assert!(ids.iter().all(|&t| t >= 0 && (t as usize) < tok.n_vocab()), "{ids:?}");
    let back = tok.decode(&ids, false, special);
    if bpe && !add_bos && !special {
        assert_eq!(back, kept_bytes(tok, &text), "{ids:?}");
    }
});

/// The bytes of `text` that have tokens: each character alone, encoded and
/// decoded (merges never change which bytes a text's tokens cover).
fn kept_bytes(tok: &Tokenizer, text: &str) -> Vec<u8> {
    let mut buf = [0u8; 4];
    text.chars()
        .flat_map(|c| tok.decode(&tok.encode(c.encode_utf8(&mut buf), false, false), false, false))
        .collect()
}
