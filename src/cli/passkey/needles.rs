//! The keys planted in a haystack and the question: one key as in
//! llama.cpp's test, or several of the same kind (`--needles K`), each the
//! key of a door of some colour, the question asking for one of them (the
//! others are distractors the model must not answer with).

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::Rng;

use super::haystack::Haystack;
use crate::tokenizer::Tokenizer;

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. \
                     I will quiz you about the important information there.";
const QUESTION: &str = " What is the pass key? The pass key is";

/// The doors keys belong to when there are several (so, at most this many).
pub const DOORS: [&str; 16] = [
    "red", "blue", "green", "yellow", "white", "black", "orange", "purple", "brown", "grey", "silver", "golden",
    "pink", "violet", "copper", "ivory",
];

/// A key and the filler piece it goes before.
#[derive(Debug, Clone, PartialEq)]
pub struct Needle {
    pub at: usize,
    pub key: u32,
    /// Its door; None for llama.cpp's single key.
    door: Option<&'static str>,
}

impl Needle {
    fn line(&self) -> String {
        let k = self.key;
        match self.door {
            None => format!(" The pass key is {k}. Remember it. {k} is the pass key."),
            Some(d) => {
                format!(" The pass key of the {d} door is {k}. Remember it. {k} is the pass key of the {d} door.")
            }
        }
    }

    fn question(&self) -> String {
        match self.door {
            None => QUESTION.to_string(),
            Some(d) => format!(" What is the pass key of the {d} door? The pass key of the {d} door is"),
        }
    }
}

/// The keys of one prompt: the one asked for and the distractors, in text order.
#[derive(Debug)]
pub struct Planted {
    needles: Vec<Needle>,
    target: usize,
}

impl Planted {
    /// `k` distinct keys of `digits` digits in a text of `n_junk` pieces:
    /// the one asked for before piece `at`, the others spread evenly over
    /// the text. One key is llama.cpp's single key (drawn as before).
    pub fn draw(rng: &mut StdRng, k: usize, digits: u32, n_junk: usize, at: usize) -> anyhow::Result<Self> {
        let range = 10u32.pow(digits - 1)..10u32.pow(digits);
        anyhow::ensure!(
            k <= DOORS.len() && k as u32 <= range.len() as u32,
            "--needles {k}: at most {} with {digits}-digit keys",
            DOORS.len().min(range.len())
        );
        let mut keys = vec![rng.gen_range(range.clone())];
        if k == 1 {
            let needles = vec![Needle {
                at,
                key: keys[0],
                door: None,
            }];
            return Ok(Self { needles, target: 0 });
        }
        while keys.len() < k {
            let key = rng.gen_range(range.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let doors = sample(rng, DOORS.len(), k);
        let spread = |j: usize| ((j as f64 + 0.5) / (k - 1) as f64 * n_junk as f64).round() as usize;
        let mut needles: Vec<Needle> = (0..k)
            .map(|j| Needle {
                at: if j == 0 { at } else { spread(j - 1) },
                key: keys[j],
                door: Some(DOORS[doors.index(j)]),
            })
            .collect();
        let target = needles[0].clone();
        needles.sort_by_key(|n| n.at);
        let target = needles
            .iter()
            .position(|n| *n == target)
            .expect("the target is planted");
        Ok(Self { needles, target })
    }

    /// The key asked for.
    pub fn target(&self) -> &Needle {
        &self.needles[self.target]
    }

    /// Where the target's line lies in `prompt` (bytes; it is there once).
    pub fn target_span(&self, prompt: &str) -> Option<std::ops::Range<usize>> {
        let line = self.target().line();
        prompt.find(&line).map(|at| at..at + line.len())
    }

    /// The prompt: intro, the first `n_junk` pieces of `hay` (grown that
    /// far) with each key line before its piece, the question.
    pub fn prompt(&self, hay: &Haystack, n_junk: usize) -> String {
        let mut p = String::from(INTRO);
        let mut next = self.needles.iter().peekable();
        for i in 0..=n_junk {
            while let Some(n) = next.next_if(|n| n.at <= i) {
                p.push_str(&n.line());
            }
            if i < n_junk {
                p.push_str(hay.piece(i));
            }
        }
        p.push_str(&self.target().question());
        p
    }
}

/// Tokens of a prompt besides its filler, for `k` keys of `digits` digits
/// (a key of that length: 12345 by default, as before).
pub fn fixed_tokens(tok: &Tokenizer, k: usize, digits: usize) -> usize {
    let cost = |s: &str| tok.encode(s, false, false).len();
    let key: u32 = "123456789"[..digits].parse().expect("1 to 9 digits");
    let door = (k > 1).then_some("yellow");
    let needle = Needle { at: 0, key, door };
    cost(INTRO) + cost(&needle.question()) + k * cost(&needle.line())
}

/// Whether `answer` gives the whole key: its first number is the key
/// (" 9035" for 90357 fails, as does " 190357").
pub fn finds_key(answer: &str, key: u32) -> bool {
    let digits = answer.trim_start_matches(|c: char| !c.is_ascii_digit());
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end] == key.to_string()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::super::haystack::Filler;
    use super::*;

    #[test]
    fn only_the_whole_key_first_counts() {
        assert!(finds_key(" 90357. Remember it. 9", 90357));
        assert!(finds_key("90357", 90357));
        for wrong in [
            " 9035. Remember",
            " 190357.",
            " 903570",
            " The pass key is",
            " 12 then 90357",
        ] {
            assert!(!finds_key(wrong, 90357), "{wrong:?}");
        }
    }

    /// One key: its line goes right before the piece asked, once, in both
    /// kinds of haystack; the pieces around it are the haystack's, in order.
    #[test]
    fn a_single_key_lies_where_it_is_asked() {
        for kind in [Filler::Repeat, Filler::Varied] {
            let mut hay = Haystack::new(kind, 5);
            hay.grow(40);
            for at in [0, 17, 40] {
                let planted = Planted::draw(&mut StdRng::seed_from_u64(1), 1, 5, 40, at).unwrap();
                let n = planted.target().clone();
                assert_eq!((n.at, n.door), (at, None));
                let p = planted.prompt(&hay, 40);
                let body = p.strip_prefix(INTRO).and_then(|b| b.strip_suffix(QUESTION)).unwrap();
                let before: String = (0..at).map(|i| hay.piece(i)).collect();
                let after: String = (at..40).map(|i| hay.piece(i)).collect();
                assert_eq!(body, format!("{before}{}{after}", n.line()), "{kind:?} at {at}");
            }
        }
    }

    /// Several keys: distinct keys and doors, the target where asked, the
    /// others spread over the text, each line once, the question naming the
    /// target's door; the same draw for the same seed.
    #[test]
    fn distractors_are_distinct_and_the_question_names_the_target() {
        let mut hay = Haystack::new(Filler::Varied, 9);
        hay.grow(100);
        let draw = |seed| Planted::draw(&mut StdRng::seed_from_u64(seed), 4, 5, 100, 30).unwrap();
        let planted = draw(3);
        assert_eq!(format!("{:?}", planted), format!("{:?}", draw(3)));
        let ns = &planted.needles;
        assert_eq!(ns.len(), 4);
        assert!(ns.windows(2).all(|w| w[0].at <= w[1].at));
        let t = planted.target();
        assert_eq!(t.at, 30);
        let others: Vec<usize> = ns.iter().filter(|n| *n != t).map(|n| n.at).collect();
        assert_eq!(others, [17, 50, 83]);
        for (i, a) in ns.iter().enumerate() {
            assert!(ns[i + 1..].iter().all(|b| a.key != b.key && a.door != b.door));
        }
        let p = planted.prompt(&hay, 100);
        for n in ns {
            assert_eq!(p.matches(&n.line()).count(), 1);
        }
        assert!(p.ends_with(&t.question()));
        assert!(t.question().contains(t.door.unwrap()));
        // Before piece 30: the pieces before it, then the target's line.
        let before: String = (0..30).map(|i| hay.piece(i)).collect::<String>();
        let distractor = ns.iter().find(|n| n.at == 17).unwrap().line();
        let want = before.replacen(hay.piece(17), &format!("{distractor}{}", hay.piece(17)), 1) + &t.line();
        assert!(p.contains(&want));
    }

    #[test]
    fn too_many_needles_are_refused() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!(Planted::draw(&mut rng, 17, 5, 100, 3).is_err());
        assert!(Planted::draw(&mut rng, 10, 1, 100, 3).is_err());
        assert!(Planted::draw(&mut rng, 9, 1, 100, 3).is_ok());
    }
}
