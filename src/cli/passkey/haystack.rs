//! The text a key hides in: llama.cpp's filler passage repeated (the
//! default, so that old figures stay comparable), or sentences that never
//! repeat (`--filler varied`), drawn from word lists by a seeded generator:
//! a model cannot skip a varied text as one pattern.

use std::collections::HashSet;

use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::tokenizer::Tokenizer;

/// llama.cpp's passkey filler, one piece of the repeated haystack.
pub const REPEATED: &str = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filler {
    /// llama.cpp's five sentences, again and again
    Repeat,
    /// A different sentence every time
    Varied,
}

const ADJECTIVES: [&str; 24] = [
    "quiet", "tired", "young", "clever", "patient", "cheerful", "careful", "curious", "old", "busy", "gentle", "proud",
    "nervous", "honest", "brave", "calm", "eager", "polite", "restless", "silent", "lucky", "modest", "stubborn",
    "friendly",
];
const PEOPLE: [&str; 32] = [
    "baker",
    "sailor",
    "farmer",
    "teacher",
    "painter",
    "doctor",
    "miller",
    "weaver",
    "fisherman",
    "gardener",
    "potter",
    "carpenter",
    "student",
    "merchant",
    "shepherd",
    "librarian",
    "tailor",
    "blacksmith",
    "poet",
    "mason",
    "nurse",
    "driver",
    "cook",
    "singer",
    "clerk",
    "hunter",
    "builder",
    "juggler",
    "pilot",
    "barber",
    "judge",
    "courier",
];
const VERBS: [&str; 24] = [
    "painted",
    "repaired",
    "carried",
    "cleaned",
    "counted",
    "measured",
    "sold",
    "found",
    "hid",
    "polished",
    "wrapped",
    "opened",
    "moved",
    "checked",
    "borrowed",
    "returned",
    "sketched",
    "weighed",
    "lifted",
    "packed",
    "sorted",
    "described",
    "tested",
    "followed",
];
const THINGS: [&str; 32] = [
    "a wooden fence",
    "a blue kettle",
    "an old map",
    "a broken clock",
    "a basket of apples",
    "a copper lamp",
    "a long ladder",
    "a stack of letters",
    "a small boat",
    "a green umbrella",
    "a heavy trunk",
    "a silver spoon",
    "a pair of boots",
    "a paper kite",
    "a glass jar",
    "a wool blanket",
    "a garden gate",
    "a brass key ring",
    "a crate of pears",
    "a leather bag",
    "a clay pot",
    "a tin whistle",
    "a rope bridge",
    "a stone bench",
    "a painted chair",
    "a loaf of bread",
    "a bundle of reeds",
    "a music box",
    "a sack of flour",
    "a red bicycle",
    "a fishing net",
    "a quilt",
];
const PLACES: [&str; 24] = [
    "near the harbour",
    "behind the mill",
    "in the market",
    "by the river",
    "at the station",
    "on the hill",
    "in the orchard",
    "under the bridge",
    "beside the chapel",
    "in the courtyard",
    "at the crossroads",
    "inside the barn",
    "on the pier",
    "by the well",
    "in the library",
    "near the bakery",
    "at the inn",
    "across the square",
    "in the workshop",
    "beyond the meadow",
    "by the lighthouse",
    "in the cellar",
    "on the terrace",
    "along the canal",
];
const TIMES: [&str; 16] = [
    "before dawn",
    "at noon",
    "after supper",
    "on Monday",
    "in the rain",
    "late at night",
    "early in spring",
    "during the fair",
    "before the storm",
    "on a windy day",
    "after the harvest",
    "at sunset",
    "in midwinter",
    "on Sunday morning",
    "before the bells rang",
    "while it snowed",
];

/// A haystack's pieces: each piece is what stands between two places a key
/// may go.
pub struct Haystack {
    kind: Filler,
    rng: StdRng,
    seen: HashSet<String>,
    varied: Vec<String>,
}

impl Haystack {
    /// The haystack of `kind`; a varied one draws its sentences from `seed`.
    pub fn new(kind: Filler, seed: u64) -> Self {
        Self {
            kind,
            // Its own stream: the keys drawn from the same seed stay as they were.
            rng: StdRng::seed_from_u64(seed ^ 0x6861_7973_7461_636b),
            seen: HashSet::new(),
            varied: Vec::new(),
        }
    }

    /// Makes the first `n` pieces available to `piece`.
    pub fn grow(&mut self, n: usize) {
        while self.kind == Filler::Varied && self.varied.len() < n {
            let s = self.sentence();
            if self.seen.insert(s.clone()) {
                self.varied.push(s);
            }
        }
    }

    /// Piece `i` (after `grow` past it).
    pub fn piece(&self, i: usize) -> &str {
        match self.kind {
            Filler::Repeat => REPEATED,
            Filler::Varied => &self.varied[i],
        }
    }

    fn sentence(&mut self) -> String {
        let mut pick = |words: &[&'static str]| words[self.rng.gen_range(0..words.len())];
        format!(
            " The {} {} {} {} {} {}.",
            pick(&ADJECTIVES),
            pick(&PEOPLE),
            pick(&VERBS),
            pick(&THINGS),
            pick(&PLACES),
            pick(&TIMES)
        )
    }

    /// How many pieces, after `fixed` tokens of other text, make about
    /// `tokens` tokens (pieces counted one by one for a varied haystack).
    pub fn pieces_for(&mut self, tok: &Tokenizer, tokens: usize, fixed: usize) -> usize {
        let cost = |s: &str| tok.encode(s, false, false).len();
        let want = tokens.saturating_sub(fixed);
        if self.kind == Filler::Repeat {
            let per = cost(&REPEATED.repeat(10)) as f64 / 10.0;
            return (want as f64 / per).round() as usize;
        }
        let (mut n, mut have) = (0, 0);
        while have < want {
            self.grow(n + 1);
            have += cost(self.piece(n));
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varied(seed: u64, n: usize) -> Vec<String> {
        let mut h = Haystack::new(Filler::Varied, seed);
        h.grow(n);
        (0..n).map(|i| h.piece(i).to_string()).collect()
    }

    /// 20,000 sentences of at least 11 words (a token or more each) are
    /// over 128K tokens: none of them repeats.
    #[test]
    fn varied_sentences_never_repeat_within_128k_tokens() {
        let s = varied(1234, 20_000);
        assert!(s.iter().all(|x| x.split_whitespace().count() >= 11), "{:?}", &s[..3]);
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), s.len());
    }

    #[test]
    fn a_seed_gives_its_sentences_every_time() {
        assert_eq!(varied(7, 300), varied(7, 300));
        assert_ne!(varied(7, 300), varied(8, 300));
        // A longer haystack starts with the shorter one's sentences.
        assert_eq!(varied(7, 500)[..300], varied(7, 300)[..]);
    }
}
