//! The session target's conversation: a tiny model under small InfLLM
//! settings, so that a few hundred tokens form blocks and move the window.

use infllm::attention::infllm::InfllmParams;
use infllm::chat::{ChatTemplate, Conversation};
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::model::Model;
use infllm::sampling::{Sampler, SamplingParams};

/// A fresh conversation with the tiny llama (its file is removed once mapped).
pub fn conversation() -> Conversation {
    let path = std::env::temp_dir().join(format!("infllm-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, crate::tiny::model("llama", 64)).expect("write the tiny model");
    let model = Model::load(&path).expect("load the tiny model");
    let _ = std::fs::remove_file(&path);
    let mut p = InfllmParams::defaults_for(model.hp.n_ctx_train);
    (p.n_init, p.n_local, p.block_size, p.topk, p.repr_topk, p.chunk) = (4, 64, 32, 2, 2, 32);
    let params = EngineParams {
        attn: AttnMode::Infllm(p),
        n_threads: 1,
        n_ctx: 0,
        n_ubatch: 64,
        block_cache: None,
        standard_ops: false,
    };
    let engine = Engine::new(model, params).expect("engine");
    let params = SamplingParams {
        seed: 1,
        ..Default::default()
    };
    let sampler = Sampler::new(params, engine.tokenizer()).expect("sampler");
    let template = ChatTemplate::builtin("chatml", "", "").expect("chatml");
    Conversation::new(engine, sampler, template, Some("Be brief.".into()))
}

/// One user turn and a short answer.
pub fn turn(conv: &mut Conversation, text: &str) -> anyhow::Result<()> {
    conv.user_turn(text, &mut |_, _| {})?;
    conv.answer(Some(4), &|| false, &mut |_| Ok(()))?;
    Ok(())
}

/// Sessions saved after one and after two turns (blocks formed in both).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut conv = conversation();
    let path = std::env::temp_dir().join(format!("infllm-fuzz-{}.session", std::process::id()));
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let mut seeds = Vec::new();
    for (i, text) in [long.as_str(), "And then?"].into_iter().enumerate() {
        turn(&mut conv, text).expect("a turn");
        conv.save(&path).expect("save");
        seeds.push((
            format!("turn{i}.session"),
            std::fs::read(&path).expect("read the session"),
        ));
    }
    let _ = std::fs::remove_file(&path);
    seeds
}

/// Sets the checksum of a session file's bytes (the 8 bytes before the last
/// 8) so that mutations reach the parsing behind it.
pub fn fix_checksum(b: &mut [u8]) {
    let n = b.len();
    if n >= 40 {
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..n - 16]);
        b[n - 16..n - 8].copy_from_slice(&sum.to_le_bytes());
    }
}
