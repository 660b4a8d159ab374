//! Layers on remote devices: two `infllm rpc-server` processes on loopback
//! (ggml's RPC protocol, real device buffers and graph transfer) hold
//! SmolLM2's layers; logits and greedy tokens must equal the CPU run's.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infllm::attention::infllm::InfllmParams;
use infllm::engine::{AttnMode, Engine, EngineParams};
use infllm::ggml::{self, Device};
use infllm::model::Model;
use infllm::placement::{GpuLayers, Offload, SplitMode};

const BIN: &str = env!("CARGO_BIN_EXE_infllm");

const STORY: &str = "The lighthouse keeper counted the ships that passed each night, writing their \
    names in a ledger that had belonged to his grandmother. ";

/// A running `infllm rpc-server`, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a server with one CPU thread and waits until it accepts connections.
fn start_server() -> Server {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["rpc-server", "-p", &port.to_string(), "-t", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start infllm rpc-server");
    let endpoint = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while TcpStream::connect(&endpoint).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rpc-server on {endpoint} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, endpoint }
}

/// Two servers (killed when the test ends) and their devices.
fn two_servers() -> (Vec<Server>, Vec<Device>) {
    let servers = vec![start_server(), start_server()];
    let devices = servers
        .iter()
        .flat_map(|s| ggml::add_rpc_server(&s.endpoint).expect("connect"))
        .collect();
    (servers, devices)
}

/// `standard_ops`: InfLLM through standard ggml ops on the CPU too (the
/// path of layers on a device); `block_cache`: device bytes for blocks.
fn engine(attn: AttnMode, offload: &Offload, standard_ops: bool, block_cache: Option<usize>, n_ctx: usize) -> Engine {
    let model = Model::load_on(&common::smollm2(), offload, &mut |_| {}).expect("load model");
    let params = EngineParams {
        attn,
        n_threads: common::THREADS as usize,
        n_ctx,
        n_ubatch: 512,
        block_cache,
        standard_ops,
    };
    Engine::new(model, params).expect("engine")
}

fn split_over(devices: &[Device]) -> Offload {
    Offload {
        devices: devices.to_vec(),
        gpu_layers: GpuLayers::Count(99),
        split: SplitMode::Layer,
        main_gpu: 0,
        tensor_split: vec![1.0, 1.0],
        repack: true,
    }
}

/// Logits of a prompt, then of `n_decode` greedy steps.
fn greedy_logits(e: &mut Engine, prompt: &[i32], n_decode: usize) -> Vec<Vec<f32>> {
    let mut out = vec![e.eval(prompt, false, &mut |_, _| {}).unwrap()];
    for _ in 0..n_decode {
        let next = common::argmax_of(out.last().unwrap());
        out.push(e.eval(&[next], false, &mut |_, _| {}).unwrap());
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding over the two servers against the CPU, whose decode
/// graph comes in `splits` parts; returns the memory blocks formed (per
/// layer) and those copied into the device caches on demand.
fn compare(
    attn: AttnMode,
    prompt_tokens: usize,
    n_decode: usize,
    block_cache: Option<usize>,
    splits: usize,
) -> (usize, usize) {
    let _one_at_a_time = common::exclusive();
    ggml::set_quiet_logs(true);
    let (_servers, devices) = two_servers();
    let n_ctx = (prompt_tokens + n_decode).max(1024);
    let mut remote = engine(attn, &split_over(&devices), false, block_cache, n_ctx);
    assert_eq!(
        remote.model().placement.devices(),
        devices,
        "layers were not split over both servers"
    );
    let text = STORY.repeat((prompt_tokens / 16).max(64));
    let tokens = remote.tokenizer().encode(&text, true, true);
    let prompt = &tokens[..prompt_tokens];
    let theirs = greedy_logits(&mut remote, prompt, n_decode);
    assert_eq!(remote.graph_splits(), splits, "the decode graph's parts");
    // The same ops on the CPU give the same logits; infllm's own kernels
    // (the CPU's InfLLM path) the same greedy tokens.
    // The servers keep weights in the file's layout, so the CPU does too
    // (a repacked layout, AMX's say, rounds differently).
    let cpu = Offload {
        repack: false,
        ..Offload::cpu()
    };
    let same_ops = greedy_logits(&mut engine(attn, &cpu, true, None, n_ctx), prompt, n_decode);
    let kernels = greedy_logits(&mut engine(attn, &cpu, false, None, n_ctx), prompt, n_decode);
    let argmax = |l: &Vec<Vec<f32>>| l.iter().map(|x| common::argmax_of(x)).collect::<Vec<_>>();
    assert_eq!(argmax(&theirs), argmax(&kernels), "greedy tokens differ from the CPU's");
    let diff = max_diff(&theirs, &same_ops);
    eprintln!("{splits} splits, largest logit difference {diff}");
    assert_eq!(diff, 0.0, "logits differ from the same ops on the CPU");
    // (The engine goes before the servers: it frees its buffers there.)
    let memory = remote.memory();
    (memory.blocks.map_or(0, |(n, _)| n), memory.block_loads)
}

#[test]
fn full_attention_split_over_two_servers_equals_the_cpu() {
    // Embeddings on the CPU, then each server's layers, the last one's with
    // the tied output head: attention runs where its layer is.
    compare(AttnMode::full(true), 100, 24, None, 3);
}

/// Small InfLLM settings: blocks form and retrieval runs within 400 tokens.
fn small_infllm() -> InfllmParams {
    InfllmParams {
        n_init: 16,
        n_local: 128,
        block_size: 32,
        topk: 2,
        chunk: 64,
        ..InfllmParams::defaults_for(8192)
    }
}

#[test]
fn infllm_split_over_two_servers_equals_the_cpu() {
    let p = small_infllm();
    let (n_blocks, loads) = compare(AttnMode::Infllm(p), 300, 60, None, 3);
    assert!(n_blocks > p.topk, "no retrieval: {n_blocks} blocks");
    assert_eq!(loads, 0, "every block was in the cache");
}

#[test]
fn infllm_past_the_device_block_cache_equals_the_cpu() {
    // Room for 3 blocks per layer on each server (SmolLM2, q8_0 blocks of
    // 32 tokens: 14,208 bytes per layer, 15 layers per server); 6 form.
    // Once past the cache, each layer scores its blocks on the CPU, which
    // copies the picked blocks that are missing into the cache: two more
    // parts per layer.
    let p = small_infllm();
    let n_layer = 30;
    let (n_blocks, loads) = compare(AttnMode::Infllm(p), 300, 60, Some(3 * 15 * 14_208), 3 + 2 * n_layer);
    assert!(n_blocks > 3, "only {n_blocks} blocks: the cache was never exceeded");
    assert!(loads > 0, "no block was copied into a cache");
    eprintln!("{loads} blocks copied in on demand over {n_layer} layers");
}

#[test]
fn two_pass_retrieval_past_the_device_block_cache_equals_the_cpu() {
    // As above, 3 blocks per layer fit; ~16 form, past the 8 candidates
    // (4 x topk) from which scoring takes two passes, the second every
    // few decode steps over kept candidates (`coarse.rs`).
    let p = InfllmParams {
        coarse_from: 4,
        coarse_every: 4,
        ..small_infllm()
    };
    let (n_blocks, loads) = compare(AttnMode::Infllm(p), 600, 60, Some(3 * 15 * 14_208), 3 + 2 * 30);
    assert!(
        n_blocks > 4 * p.topk,
        "only {n_blocks} blocks: one pass scored them all"
    );
    assert!(loads > 0, "no block was copied into a cache");
}

#[test]
fn infllm_defaults_past_8k_tokens_past_the_device_block_cache_equal_the_cpu() {
    // SmolLM2's own settings (span 6,272: 16 blocks of 128 tokens) over
    // 8,320 tokens, past its 8K training context: 32 blocks per layer.
    // Room for 20 blocks per layer on each server (q8_0 blocks of 128
    // tokens: 53,376 bytes per layer, 15 layers per server).
    let p = InfllmParams::defaults_for(8192);
    let (n_blocks, loads) = compare(AttnMode::Infllm(p), 8320, 4, Some(20 * 15 * 53_376), 3 + 2 * 30);
    assert!(n_blocks > 20, "only {n_blocks} blocks: the cache was never exceeded");
    assert!(loads > 0, "no block was copied into a cache");
    eprintln!("{n_blocks} blocks per layer, {loads} copied in on demand");
}

#[test]
fn a_rollback_past_the_device_block_cache_puts_each_block_back_in_its_slot() {
    // As above: 3 blocks per layer fit. Back to 1 block after 6 formed and
    // were copied around: the same continuation gives the same logits.
    let _one_at_a_time = common::exclusive();
    ggml::set_quiet_logs(true);
    let (_servers, devices) = two_servers();
    let mut e = engine(
        AttnMode::Infllm(small_infllm()),
        &split_over(&devices),
        false,
        Some(3 * 15 * 14_208),
        1024,
    );
    let tokens = e.tokenizer().encode(&STORY.repeat(64), true, true);
    e.eval(&tokens[..180], false, &mut |_, _| {}).unwrap();
    let before = e.snapshot();
    let blocks = |e: &Engine| e.memory().blocks.map_or(0, |(n, _)| n);
    assert_eq!(blocks(&e), 1);
    let first = greedy_logits(&mut e, &tokens[180..300], 40);
    assert!(
        blocks(&e) > 3 && e.memory().block_loads > 0,
        "the cache was never outgrown"
    );
    e.rollback(&before).unwrap();
    let again = greedy_logits(&mut e, &tokens[180..300], 40);
    assert_eq!(max_diff(&first, &again), 0.0, "logits differ after the rollback");
}

#[test]
fn a_server_killed_mid_run_ends_the_run_with_one_line_naming_it() {
    let _one_at_a_time = common::exclusive();
    let mut server = start_server();
    let prompt = std::env::temp_dir().join(format!("infllm-rpc-kill-{}.txt", std::process::id()));
    std::fs::write(&prompt, STORY.repeat(150)).unwrap();
    let run = Command::new(BIN)
        .args([
            "-m",
            common::smollm2().to_str().unwrap(),
            "-n",
            "8",
            "--temp",
            "0",
            "-t",
            "1",
        ])
        .args(["--rpc", &server.endpoint, "-ngl", "99", "-f", prompt.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once the model is on it and the prompt is being read.
    std::thread::sleep(Duration::from_millis(1500));
    server.child.kill().unwrap();
    let out = run.wait_with_output().unwrap();
    std::fs::remove_file(&prompt).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("infllm: ")).collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    assert!(errors[0].starts_with("error: "), "{}", errors[0]);
    assert!(
        errors[0].contains(&server.endpoint),
        "the error does not name the device: {}",
        errors[0]
    );
}

#[test]
fn shared_retrieval_split_over_two_servers_equals_the_cpu() {
    // The voters (layers 10-29) copy their block scores into tensors on
    // their server; the vote read back after each step picks the blocks
    // of every layer at the next decode step, on both servers.
    let p = InfllmParams {
        shared: true,
        coarse_from: 0,
        ..small_infllm()
    };
    let (n_blocks, _) = compare(AttnMode::Infllm(p), 300, 60, None, 3);
    assert!(n_blocks > p.topk, "no retrieval: {n_blocks} blocks");
}

#[test]
fn shared_retrieval_past_the_device_block_cache_equals_the_cpu() {
    // Past the cache the blocks are scored on the CPU, so the voters' scores
    // go to host memory: no part beyond the paper's retrieval's two per layer.
    let p = InfllmParams {
        shared: true,
        coarse_from: 0,
        ..small_infllm()
    };
    let (_, loads) = compare(AttnMode::Infllm(p), 300, 60, Some(3 * 15 * 14_208), 3 + 2 * 30);
    assert!(loads > 0, "no block was copied into a cache");
}

#[test]
fn shared_retrieval_past_coarse_from_and_the_device_block_cache_equals_the_cpu() {
    // As `two_pass_retrieval_...`: ~16 blocks, 3 fit per layer; the voters
    // score the q4_0 copy on the CPU, then the vote's kept candidates. The
    // last decode graph has two parts more per voter (20) than the paper's
    // retrieval: the vote's scoring is not kept on the CPU as a whole.
    let p = InfllmParams {
        shared: true,
        coarse_from: 4,
        coarse_every: 4,
        ..small_infllm()
    };
    let parts = 3 + 2 * 30 + 2 * 20;
    let (n_blocks, loads) = compare(AttnMode::Infllm(p), 600, 60, Some(3 * 15 * 14_208), parts);
    assert!(n_blocks > 4 * p.topk, "only {n_blocks} blocks: no candidates were kept");
    assert!(loads > 0, "no block was copied into a cache");
}
