use super::*;

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::with_vocab(
        params,
        VocabFacts {
            n_vocab: 100,
            ..Default::default()
        },
    )
}

fn logits() -> Vec<f32> {
    (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect()
}

#[test]
fn greedy_takes_first_maximum_in_vocabulary_order() {
    // Unsorted (no top-k before it), temperature 0 keeps the first best.
    let mut s = sampler(SamplingParams {
        temp: 0.0,
        samplers: vec![Stage::Temperature],
        ..Default::default()
    });
    assert_eq!(s.sample(&[0.1, 2.0, 2.0, -1.0]), 1);
}

#[test]
fn state_round_trip_continues_the_draws() {
    let params = SamplingParams {
        seed: 7,
        repeat_penalty: 1.3,
        xtc_probability: 0.5,
        ..Default::default()
    };
    for mirostat in [0, 2] {
        let mut a = sampler(SamplingParams {
            mirostat,
            ..params.clone()
        });
        for _ in 0..13 {
            let t = a.sample(&logits());
            a.accept(t);
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let s: SamplerState = serde_json::from_str(&json).unwrap();
        s.check(100).unwrap();
        let mut b = Sampler::restored(&s, a.vocab.clone());
        let draws = |s: &mut Sampler| {
            (0..20)
                .map(|_| {
                    let t = s.sample(&logits());
                    s.accept(t);
                    t
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(&mut a), draws(&mut b));
    }
}

#[test]
fn check_names_the_flag() {
    let ok = SamplingParams::default();
    ok.check().unwrap();
    let bad = [
        (
            SamplingParams {
                temp: f32::NAN,
                ..ok.clone()
            },
            "--temp must be a finite number (<= 0: greedy), got NaN",
        ),
        (
            SamplingParams {
                top_p: -1.0,
                ..ok.clone()
            },
            "--top-p must be in [0, 1], got -1",
        ),
        (
            SamplingParams {
                typical_p: 2.0,
                ..ok.clone()
            },
            "--typical must be in [0, 1], got 2",
        ),
        (
            SamplingParams {
                repeat_penalty: 0.0,
                ..ok.clone()
            },
            "--repeat-penalty must be a number > 0 (1: off), got 0",
        ),
        (
            SamplingParams {
                presence_penalty: f32::INFINITY,
                ..ok.clone()
            },
            "--presence-penalty must be a finite number, got inf",
        ),
        (
            SamplingParams {
                dry_base: 0.5,
                ..ok.clone()
            },
            "--dry-base must be a finite number >= 1, got 0.5",
        ),
        (
            SamplingParams {
                mirostat: 3,
                ..ok.clone()
            },
            "--mirostat must be 0, 1 or 2, got 3",
        ),
        (
            SamplingParams {
                repeat_last_n: 1 << 40,
                ..ok.clone()
            },
            "--repeat-last-n must be in [-1, 2147483647] (-1: the context size), got 1099511627776",
        ),
    ];
    for (p, message) in bad {
        assert_eq!(p.check().unwrap_err().to_string(), message);
    }
    let biased = SamplingParams {
        logit_bias: vec![(100, 1.0)],
        ..ok
    };
    assert_eq!(
        biased.check_vocab(100).unwrap_err().to_string(),
        "--logit-bias: token 100 is not in the vocabulary (0..100)"
    );
}

#[test]
fn repeat_penalty_demotes_seen_tokens() {
    let mut s = sampler(SamplingParams {
        temp: 0.0,
        repeat_penalty: 2.0,
        ..Default::default()
    });
    s.accept(0);
    assert_eq!(s.sample(&[3.0, 2.0]), 1);
}

#[test]
fn history_keeps_the_longer_window() {
    let mut s = sampler(SamplingParams {
        repeat_last_n: 3,
        dry_multiplier: 0.8,
        dry_penalty_last_n: 5,
        ..Default::default()
    });
    (0..10).for_each(|t| s.accept(t));
    assert_eq!(s.history(), [5, 6, 7, 8, 9]);
}
