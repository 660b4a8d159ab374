//! Memory blocks in a file (`--mem-file`, `--mem-budget`) against blocks in
//! memory: the same operations give the same logits, bit for bit, while
//! blocks form, move to the file mid-text, are saved and read back into a
//! new engine, and are overwritten after a rollback.

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
