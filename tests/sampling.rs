//! infllm's samplers against llama.cpp's (`llama_sampler_*`, chained as its
//! common sampler chains them): same seed, same logits, same history, same
//! token, draw after draw.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use infllm::ggml::reference::{RefModel, RefSampler};
use infllm::gguf::GgufFile;
use infllm::sampling::{parse_stages, Sampler, SamplerState, SamplingParams, Stage};
use infllm::tokenizer::{Token, Tokenizer};
use rand::{Rng, SeedableRng};

struct Vocab {
    ours: Tokenizer,
    theirs: RefModel,
}

/// SmolLM2's vocabulary, in infllm and in llama.cpp.
fn vocab() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| {
        let path = common::smollm2();
        let file = GgufFile::open(&path).expect("SmolLM2 model file");
        Vocab {
            ours: Tokenizer::from_gguf(&file).expect("SmolLM2 tokenizer"),
            theirs: RefModel::load(&path).expect("llama.cpp loads SmolLM2"),
        }
    })
}

/// A run of draws: the parameters, the prompt the samplers have seen, and
/// tokens made likely (so that texts repeat and penalties matter).
struct Case {
    name: &'static str,
    params: SamplingParams,
    prompt: Vec<Token>,
    favoured: Vec<Token>,
    /// Logits rounded to quarters: many ties, which the sorts must order
    /// as llama.cpp's do.
    ties: bool,
}

impl Case {
    fn new(name: &'static str, params: SamplingParams) -> Self {
        let favoured = (100..140).collect();
        Self {
            name,
            params,
            prompt: Vec::new(),
            favoured,
            ties: false,
        }
    }

    fn tied(self) -> Self {
        Self { ties: true, ..self }
    }

    fn alone(name: &'static str, stage: Stage, params: SamplingParams) -> Self {
        Self::new(
            name,
            SamplingParams {
                samplers: vec![stage],
                ..params
            },
        )
    }
}

/// Logits of the whole vocabulary: noise of a scale set by the seed, the
/// favoured tokens lifted.
fn logits(rng: &mut rand::rngs::StdRng, scale: f32, favoured: &[Token]) -> Vec<f32> {
    let n = vocab().ours.n_vocab();
    let mut l: Vec<f32> = (0..n)
        .map(|_| scale * (rng.gen::<f32>() + rng.gen::<f32>() - 1.0))
        .collect();
    for &t in favoured {
        l[t as usize] += 4.0 + 3.0 * rng.gen::<f32>();
    }
    l
}

const SEEDS: u32 = 12;
const DRAWS: usize = 24;

/// Runs `case` for each seed: both samplers draw, both accept the token.
/// Returns the draws compared. The case must make a difference: some draws
/// differ from a plain draw (no stage) on the same generator stream.
fn check(case: &Case) -> usize {
    let v = vocab();
    let n_vocab = v.ours.n_vocab();
    let mut changed = 0;
    for seed in 0..SEEDS {
        let seed = seed.wrapping_mul(2_654_435_761) ^ 0x5eed;
        let p = SamplingParams {
            seed,
            ..case.params.clone()
        };
        let mut ours = Sampler::new(p.clone(), &v.ours).unwrap();
        let mut theirs = RefSampler::common(&p, n_vocab, Some(&v.theirs)).unwrap();
        let plain = SamplingParams {
            samplers: vec![],
            seed,
            ..SamplingParams::default()
        };
        let mut plain = Sampler::new(plain, &v.ours).unwrap();
        for &t in &case.prompt {
            ours.accept(t);
            theirs.accept(t);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(seed));
        let scale = 1.0 + (seed % 7) as f32;
        for draw in 0..DRAWS {
            let mut l = logits(&mut rng, scale, &case.favoured);
            if case.ties {
                l.iter_mut().for_each(|x| *x = (*x * 4.0).round() / 4.0);
            }
            let (a, b) = (ours.sample(&l), theirs.sample(&l));
            assert_eq!(
                a, b,
                "{}: seed {seed}, draw {draw}: infllm {a}, llama.cpp {b}",
                case.name
            );
            changed += usize::from(plain.sample(&l) != a);
            ours.accept(a);
            theirs.accept(b);
        }
    }
    eprintln!(
        "{}: {SEEDS} seeds x {DRAWS} draws equal ({changed} not the plain draw)",
        case.name
    );
    assert!(
        changed > 0 || case.name == "dist only",
        "{}: changes nothing",
        case.name
    );
    (SEEDS as usize) * DRAWS
}

fn run_all(cases: &[Case]) {
    let total: usize = cases.iter().map(check).sum();
    eprintln!("{} cases, {total} draws: all equal", cases.len());
}

#[test]
fn each_sampler_alone_draws_as_llama_cpp() {
    let d = SamplingParams::default;
    let penalties = SamplingParams {
        repeat_penalty: 1.3,
        frequency_penalty: 0.4,
        presence_penalty: 0.6,
        repeat_last_n: 16,
        ..d()
    };
    run_all(&[
        Case::alone("dist only", Stage::Temperature, SamplingParams { temp: 1.0, ..d() }),
        Case::alone("temperature", Stage::Temperature, SamplingParams { temp: 0.6, ..d() }),
        Case::alone("greedy", Stage::Temperature, SamplingParams { temp: 0.0, ..d() }),
        Case::alone("top_k", Stage::TopK, SamplingParams { top_k: 12, ..d() }),
        Case::alone("top_p", Stage::TopP, SamplingParams { top_p: 0.8, ..d() }),
        Case::alone("min_p", Stage::MinP, SamplingParams { min_p: 0.1, ..d() }),
        Case::alone("typ_p", Stage::TypP, SamplingParams { typical_p: 0.7, ..d() }),
        Case::alone(
            "top_n_sigma",
            Stage::TopNSigma,
            SamplingParams {
                top_n_sigma: 1.5,
                ..d()
            },
        ),
        Case::alone(
            "xtc",
            Stage::Xtc,
            SamplingParams {
                xtc_probability: 0.6,
                xtc_threshold: 0.05,
                ..d()
            },
        ),
        Case::alone("penalties", Stage::Penalties, penalties),
    ]);
}

#[test]
fn chains_draw_as_llama_cpp() {
    let d = SamplingParams::default;
    let all_on = SamplingParams {
        repeat_penalty: 1.1,
        presence_penalty: 0.3,
        dry_multiplier: 0.8,
        top_n_sigma: 2.5,
        typical_p: 0.95,
        xtc_probability: 0.5,
        xtc_threshold: 0.1,
        temp: 0.9,
        ..d()
    };
    let order = |s: &str, p: SamplingParams| SamplingParams {
        samplers: parse_stages(s).unwrap(),
        ..p
    };
    run_all(&[
        Case::new("default chain", d()),
        Case::new("default chain, greedy", SamplingParams { temp: 0.0, ..d() }),
        Case::new("default order, all on", all_on.clone()),
        Case::new(
            "top_k;temperature;top_p;min_p",
            order("top_k;temperature;top_p;min_p", d()),
        ),
        Case::new("min_p;xtc;temperature", order("min_p;xtc;temperature", all_on.clone())),
        Case::new(
            "typ_p;top_k;temperature;top_n_sigma",
            order("typ_p;top_k;temperature;top_n_sigma", all_on.clone()),
        ),
        Case::new(
            "temperature;penalties;top_p",
            order("temperature;penalties;top_p", all_on),
        ),
        Case::new("mirostat 1", SamplingParams { mirostat: 1, ..d() }),
        Case::new(
            "mirostat 2",
            SamplingParams {
                mirostat: 2,
                mirostat_ent: 3.0,
                mirostat_lr: 0.2,
                ..d()
            },
        ),
    ]);
}

#[test]
fn tied_logits_draw_as_llama_cpp() {
    let d = SamplingParams::default;
    let all_on = SamplingParams {
        repeat_penalty: 1.1,
        top_n_sigma: 2.5,
        typical_p: 0.95,
        xtc_probability: 0.5,
        ..d()
    };
    run_all(&[
        Case::new("tied: default chain", d()).tied(),
        Case::new("tied: default chain, greedy", SamplingParams { temp: 0.0, ..d() }).tied(),
        Case::new("tied: default order, all on", all_on).tied(),
        Case::alone("tied: top_k 300", Stage::TopK, SamplingParams { top_k: 300, ..d() }).tied(),
        Case::alone("tied: top_p", Stage::TopP, SamplingParams { top_p: 0.5, ..d() }).tied(),
        Case::alone("tied: typ_p", Stage::TypP, SamplingParams { typical_p: 0.5, ..d() }).tied(),
        Case::alone(
            "tied: xtc",
            Stage::Xtc,
            SamplingParams {
                xtc_probability: 0.7,
                xtc_threshold: 0.02,
                ..d()
            },
        )
        .tied(),
        Case::new("tied: mirostat 1", SamplingParams { mirostat: 1, ..d() }).tied(),
    ]);
}

/// A text that repeats itself, with DRY's default breakers ('\n', ':').
fn repetitive_prompt() -> Vec<Token> {
    let text = "The cat sat on the mat. The cat sat on the mat.\nName: The cat sat on the mat. The cat sat";
    vocab().ours.encode(text, false, false)
}

#[test]
fn dry_draws_as_llama_cpp() {
    let prompt = repetitive_prompt();
    let mut favoured = prompt.clone();
    favoured.extend(vocab().ours.encode("\n:", false, false));
    let dry = SamplingParams {
        samplers: vec![Stage::Dry],
        dry_multiplier: 0.8,
        temp: 1.0,
        ..Default::default()
    };
    let case = |name, params| Case {
        name,
        params,
        prompt: prompt.clone(),
        favoured: favoured.clone(),
        ties: false,
    };
    let breakers = |b: &[&str]| b.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    run_all(&[
        case("dry, default breakers", dry.clone()),
        case(
            "dry, allowed 1, base 3",
            SamplingParams {
                dry_allowed_length: 1,
                dry_base: 3.0,
                ..dry.clone()
            },
        ),
        case(
            "dry, breakers ' mat' and 'Name:'",
            SamplingParams {
                dry_sequence_breakers: breakers(&[" mat", "Name:"]),
                ..dry.clone()
            },
        ),
        case(
            "dry, no breakers, last 16",
            SamplingParams {
                dry_sequence_breakers: vec![],
                dry_penalty_last_n: 16,
                ..dry.clone()
            },
        ),
        case(
            "dry in the default chain",
            SamplingParams {
                samplers: infllm::sampling::DEFAULT_STAGES.to_vec(),
                ..dry
            },
        ),
    ]);
}

#[test]
fn logit_bias_and_ignore_eos_draw_as_llama_cpp() {
    let tok = &vocab().ours;
    let eog: Vec<Token> = (0..tok.n_vocab() as Token).filter(|&t| tok.is_eog(t)).collect();
    assert!(!eog.is_empty(), "SmolLM2 has end-of-generation tokens");
    let mut favoured = eog.clone();
    favoured.extend(100..110);
    let biased = SamplingParams {
        logit_bias: vec![
            (105, -5.0),
            (106, 2.5),
            (107, f32::NEG_INFINITY),
            (3000, 9.0),
            (105, 1.0),
        ],
        ..Default::default()
    };
    let case = |name, params| Case {
        name,
        params,
        prompt: vec![],
        favoured: favoured.clone(),
        ties: false,
    };
    run_all(&[
        case("logit bias", biased.clone()),
        case(
            "ignore eos",
            SamplingParams {
                ignore_eos: true,
                ..Default::default()
            },
        ),
        case(
            "ignore eos and logit bias, mirostat 2",
            SamplingParams {
                ignore_eos: true,
                mirostat: 2,
                ..biased
            },
        ),
    ]);
    let mut s = Sampler::new(
        SamplingParams {
            ignore_eos: true,
            ..Default::default()
        },
        tok,
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let t = s.sample(&logits(&mut rng, 1.0, &favoured));
        assert!(!tok.is_eog(t), "--ignore-eos drew end-of-generation token {t}");
    }
}

#[test]
fn a_saved_sampler_goes_on_with_the_same_draws() {
    let v = vocab();
    let params = SamplingParams {
        seed: 42,
        repeat_penalty: 1.2,
        dry_multiplier: 0.5,
        xtc_probability: 0.5,
        ..Default::default()
    };
    for mirostat in [0, 1] {
        let p = SamplingParams {
            mirostat,
            ..params.clone()
        };
        let mut a = Sampler::new(p.clone(), &v.ours).unwrap();
        let mut reference = RefSampler::common(&p, v.ours.n_vocab(), Some(&v.theirs)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let favoured: Vec<Token> = (200..230).collect();
        let step = |s: &mut Sampler, r: &mut RefSampler, rng: &mut rand::rngs::StdRng| {
            let l = logits(rng, 2.0, &favoured);
            let t = s.sample(&l);
            assert_eq!(t, r.sample(&l), "mirostat {mirostat}");
            s.accept(t);
            r.accept(t);
        };
        for _ in 0..17 {
            step(&mut a, &mut reference, &mut rng);
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let state: SamplerState = serde_json::from_str(&json).unwrap();
        let mut b = Sampler::from_state(&state, &v.ours).unwrap();
        drop(a);
        for _ in 0..30 {
            step(&mut b, &mut reference, &mut rng);
        }
    }
}

#[test]
fn bad_sampling_flags_give_one_line_naming_the_flag() {
    let model = common::smollm2();
    let cases: &[(&[&str], &str)] = &[
        (&["--typical", "2"], "--typical must be in [0, 1], got 2"),
        (&["--xtc-probability", "-0.5"], "--xtc-probability"),
        (
            &["--presence-penalty", "inf"],
            "--presence-penalty must be a finite number, got inf",
        ),
        (
            &["--dry-base", "0.5"],
            "--dry-base must be a finite number >= 1, got 0.5",
        ),
        (&["--mirostat", "3"], "--mirostat"),
        (&["--samplers", "top_k;bogus"], "unknown sampler \"bogus\""),
        (&["--sampling-seq", "kq"], "unknown sampler letter 'q'"),
        (&["-l", "15043*1"], "TOKEN_ID(+/-)BIAS"),
        (
            &["-l", "99999999+1"],
            "--logit-bias: token 99999999 is not in the vocabulary (0..49152)",
        ),
        (&["-s", "4294967296"], "--seed"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["-m", model.to_str().unwrap(), "-p", "Hello", "-n", "2"];
        args.extend_from_slice(flags);
        let out = Command::new(env!("CARGO_BIN_EXE_infllm")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{flags:?}: {err}"));
        assert!(line.contains(needle), "{flags:?}: {line:?} does not say {needle:?}");
    }
}
