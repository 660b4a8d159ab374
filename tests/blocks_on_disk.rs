//! Memory blocks in a file (`--mem-file`, `--mem-budget`) against blocks in
//! memory: the same operations give the same logits, bit for bit, while
//! blocks form, move to the file mid-text, are saved and read back into a
//! new engine, and are overwritten after a rollback; and a kept block file
//! that saved states name instead of copying the blocks.

mod common;

use infllm::attention::infllm::{BlockSpill, InfllmParams};
use infllm::attention::MemorySections;
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::model::Model;

const TEXT: &str = "The lighthouse keeper wrote the weather in a red notebook every \
    evening. Ships passed at dawn, their horns low over the water, and the gulls \
    answered from the rocks. In winter the lamp burned longer and the oil came by \
    boat from the mainland, twice a month when the sea allowed it. ";

/// Small settings: blocks form after a few hundred tokens; a cap of 4096
/// tokens keeps the file's regions small.
fn engine() -> Engine {
    let p = InfllmParams {
        n_init: 16,
        n_local: 256,
        block_size: 32,
        topk: 2,
        chunk: 64,
        max_tokens: 4096,
        ..InfllmParams::defaults_for(8192)
    };
    let params = EngineParams {
        attn: AttnMode::Infllm(p),
        n_threads: common::THREADS as usize,
        n_ctx: 4096,
        n_ubatch: 512,
        block_cache: None,
        standard_ops: false,
    };
    Engine::new(Model::load(&common::smollm2()).expect("load model"), params).expect("engine")
}

/// What a run saw: logits of every step, blocks on disk after the prompt
/// and at the end.
struct Run {
    logits: Vec<f32>,
    on_disk: [Option<u64>; 2],
}

/// A prompt of 320 tokens, decode steps to 520; the state saved and read
/// into a new engine (blocks in a temporary file there, if `spill`); 40
/// steps rolled back; decode steps to 700.
fn run(tokens: &[i32], spill: Option<BlockSpill>) -> Run {
    let mut e = engine();
    let spill_now = |e: &mut Engine, s: &Option<BlockSpill>| {
        if let Some(s) = s {
            e.spill_blocks(s.clone()).expect("spill");
        }
    };
    spill_now(&mut e, &spill);
    let mut logits = e.eval(&tokens[..320], false, &mut |_, _| {}).unwrap();
    let after_prompt = e.memory().blocks_on_disk;
    let decode = |e: &mut Engine, range: std::ops::Range<usize>, logits: &mut Vec<f32>| {
        for &t in &tokens[range] {
            logits.extend(e.eval(&[t], false, &mut |_, _| {}).unwrap());
        }
    };
    decode(&mut e, 320..520, &mut logits);
    let mut saved = MemorySections::default();
    let state = e.state_write(&mut saved).unwrap();
    let mut e = engine();
    spill_now(&mut e, &spill.as_ref().map(|_| BlockSpill::default()));
    e.state_read(&state, &mut saved.reader(520).unwrap()).unwrap();
    let before = e.snapshot();
    decode(&mut e, 520..560, &mut Vec::new());
    e.rollback(&before).unwrap();
    decode(&mut e, 520..700, &mut logits);
    assert!(e.memory().blocks.is_some_and(|(n, _)| n > 8), "{}", e.memory());
    Run {
        logits,
        on_disk: [after_prompt, e.memory().blocks_on_disk],
    }
}

#[test]
fn blocks_in_a_file_give_the_logits_of_blocks_in_memory() {
    let _one_at_a_time = common::exclusive();
    infllm::ggml::set_quiet_logs(true);
    let tokens = engine().tokenizer().encode(&TEXT.repeat(12), true, true);
    assert!(tokens.len() >= 700, "{} tokens", tokens.len());
    let dir = std::env::temp_dir().join(format!("infllm-blocks-on-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("blocks");
    // About 4 blocks of 30 layers' keys and values (q8_0): the blocks
    // move to the file during the decode steps, not in the prompt.
    let spill = BlockSpill {
        file: Some(file.clone()),
        budget: 3 << 19,
        keep: false,
    };
    let in_memory = run(&tokens, None);
    let on_disk = run(&tokens, Some(spill));
    assert_eq!(in_memory.on_disk, [None, None]);
    assert_eq!(
        on_disk.on_disk[0], None,
        "the blocks moved before they passed the budget"
    );
    assert!(on_disk.on_disk[1].is_some_and(|b| b > 0), "no blocks on disk");
    assert!(!file.exists(), "the block file was not unlinked");
    let n_vocab = in_memory.logits.len() / (1 + 200 + 180);
    let first = in_memory
        .logits
        .iter()
        .zip(&on_disk.logits)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(first.map(|i| i / n_vocab), None, "logits differ from this step on");
    assert_eq!(in_memory.logits.len(), on_disk.logits.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logits of decoding `tokens` one at a time.
fn decode(e: &mut Engine, tokens: &[i32]) -> Vec<f32> {
    tokens
        .iter()
        .flat_map(|&t| e.eval(&[t], false, &mut |_, _| {}).unwrap())
        .collect()
}

/// An engine whose blocks go to the kept file `file` past ~4 blocks.
fn kept_engine(file: &std::path::Path) -> Engine {
    let mut e = engine();
    let spill = BlockSpill {
        file: Some(file.into()),
        budget: 3 << 19,
        keep: true,
    };
    e.spill_blocks(spill).expect("spill");
    e
}

/// An engine's saved state and sections.
fn save(e: &Engine) -> (serde_json::Value, MemorySections) {
    let mut sections = MemorySections::default();
    let state = e.state_write(&mut sections).unwrap();
    (state, sections)
}

/// A state saved from a kept block file, read back into a fresh engine.
fn load(saved: &(serde_json::Value, MemorySections), n_past: usize) -> anyhow::Result<Engine> {
    let mut e = engine();
    let result = e.state_read(&saved.0, &mut saved.1.reader(n_past).unwrap());
    assert!(result.is_ok() || e.n_past() == 0, "a refused state changed the engine");
    result.map(|()| e)
}

/// The first index where two runs' logits differ, in steps.
fn first_difference(a: &[f32], b: &[f32], n_vocab: usize) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
        .map(|i| i / n_vocab)
}

#[test]
fn saved_states_name_a_kept_block_file_that_keeps_what_they_name() {
    let _one_at_a_time = common::exclusive();
    infllm::ggml::set_quiet_logs(true);
    let tokens = engine().tokenizer().encode(&TEXT.repeat(12), true, true);
    let n_vocab = engine().tokenizer().n_vocab();
    let dir = std::env::temp_dir().join(format!("infllm-kept-blocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chat.session.blocks");

    // The reference: blocks in memory, 320 prompt tokens, decode to 700.
    let mut r = engine();
    r.eval(&tokens[..320], false, &mut |_, _| {}).unwrap();
    let mut want = decode(&mut r, &tokens[320..600]);
    let inline_600 = save(&r);
    want.extend(decode(&mut r, &tokens[600..700]));
    let want =
        |range: std::ops::Range<usize>| want[(range.start - 320) * n_vocab..(range.end - 320) * n_vocab].to_vec();

    // Saved at 520 and 600 tokens; then, back at 320 tokens, 300 tokens
    // of another text form blocks where the saved states have their own.
    let mut k = kept_engine(&file);
    k.eval(&tokens[..320], false, &mut |_, _| {}).unwrap();
    let before = k.snapshot();
    let got = decode(&mut k, &tokens[320..520]);
    assert_eq!(first_difference(&got, &want(320..520), n_vocab), None);
    assert!(k.memory().blocks_on_disk.is_some(), "the blocks did not move");
    let at_520 = save(&k);
    let got = decode(&mut k, &tokens[520..600]);
    assert_eq!(first_difference(&got, &want(520..600), n_vocab), None);
    let at_600 = save(&k);
    // Keys and values are 92% of the blocks' bytes (q8_0 K and V, f16
    // representative keys): the kept file's state leaves them out.
    let block_bytes = k.memory().blocks.unwrap().1;
    assert!(at_600.0.to_string().contains("chat.session.blocks"), "{}", at_600.0);
    assert!(
        at_600.1.len() + block_bytes * 9 / 10 < inline_600.1.len(),
        "the saved state copies the blocks ({} bytes, {} with the blocks in memory)",
        at_600.1.len(),
        inline_600.1.len()
    );
    let saved_len = engine_file_len(&file);
    k.rollback(&before).unwrap();
    let other = engine().tokenizer().encode(&TEXT.to_uppercase().repeat(4), false, true);
    k.eval(&other[..300], false, &mut |_, _| {}).unwrap();
    assert!(k.memory().blocks.unwrap().0 >= 10);
    assert!(engine_file_len(&file) > saved_len, "the file did not grow");
    // What no saved state names is given back when the engine goes.
    drop(k);
    assert_eq!(engine_file_len(&file), saved_len);

    // Each saved state reads back and goes on as the reference does; the
    // blocks it forms, in no saved state, go with it.
    let mut e = load(&at_600, 600).expect("the state saved at 600 tokens");
    let blocks = e.memory().blocks.unwrap().0;
    let got = decode(&mut e, &tokens[600..700]);
    assert_eq!(first_difference(&got, &want(600..700), n_vocab), None);
    assert!(e.memory().blocks.unwrap().0 > blocks, "no block formed");
    assert!(engine_file_len(&file) > saved_len);
    drop(e);
    assert_eq!(engine_file_len(&file), saved_len);
    let mut e = load(&at_520, 520).expect("the state saved at 520 tokens");
    let got = decode(&mut e, &tokens[520..560]);
    assert_eq!(first_difference(&got, &want(520..560), n_vocab), None);
    drop(e);

    // A changed byte in a block, a shorter file, no file: refused.
    let corrupt = std::fs::read(&file).unwrap();
    let mut bytes = corrupt.clone();
    bytes[(1 << 16) + 100] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let err = format!("{:#}", load(&at_600, 600).err().expect("a corrupt block was read"));
    assert!(err.contains("is corrupt (block 0 differs"), "{err}");
    std::fs::write(&file, &corrupt[..(1 << 16) + 1000]).unwrap();
    let err = format!("{:#}", load(&at_600, 600).err().expect("a truncated file was read"));
    assert!(err.contains("is truncated"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = format!("{:#}", load(&at_600, 600).err().expect("a missing file was read"));
    assert!(err.contains("chat.session.blocks"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn engine_file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
