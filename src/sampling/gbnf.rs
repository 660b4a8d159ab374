//! llama.cpp's GBNF read as llama.cpp's grammar parser reads it, and
//! written out in llguidance's Lark syntax (llguidance has no GBNF reader).
//! Only the syntax changes: rules, literals, character classes, `.`,
//! groups and repetitions keep their meaning. Token references (`<...>`,
//! `!<...>`) are refused.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::fmt::Write;

/// One element of a sequence.
#[derive(Debug, Clone)]
enum Item {
    Literal(Vec<char>),
    Class { negated: bool, ranges: Vec<(char, char)> },
    Any,
    Rule(String),
    Group(Vec<Vec<Item>>),
    Repeat(Box<Item>, usize, Option<usize>),
}

/// The Lark text of the GBNF grammar `src` (its start rule is `root`).
pub fn to_lark(src: &str) -> Result<String> {
    let mut p = Reader {
        s: src.chars().collect(),
        i: 0,
    };
    let mut rules: Vec<(String, Vec<Vec<Item>>)> = Vec::new();
    p.space(true);
    while !p.done() {
        let (name, alts) = p.rule()?;
        match rules.iter_mut().find(|(n, _)| *n == name) {
            // llama.cpp: a second definition replaces the first.
            Some(r) => r.1 = alts,
            None => rules.push((name, alts)),
        }
    }
    let defined: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(defined.contains("root"), "the GBNF grammar has no 'root' rule");
    let mut used = BTreeSet::new();
    rules.iter().for_each(|(_, alts)| refs(alts, &mut used));
    if let Some(u) = used.iter().find(|u| !defined.contains(u.as_str())) {
        bail!("the GBNF grammar uses rule '{u}' but does not define it");
    }
    let mut out = format!("start: {}\n", lark_name("root"));
    for (name, alts) in &rules {
        let _ = writeln!(out, "{}: {}", lark_name(name), alternatives(alts));
    }
    Ok(out)
}

fn refs(alts: &[Vec<Item>], used: &mut BTreeSet<String>) {
    for item in alts.iter().flatten() {
        let mut it = item;
        while let Item::Repeat(inner, ..) = it {
            it = inner;
        }
        match it {
            Item::Rule(n) => {
                used.insert(n.clone());
            }
            Item::Group(g) => refs(g, used),
            _ => {}
        }
    }
}

/// A GBNF name as a Lark rule name: Lark rules are lower case, so an upper
/// case letter becomes `_` and the letter (GBNF names have no `_`).
fn lark_name(name: &str) -> String {
    let mut s = String::from("r-");
    for c in name.chars() {
        match c.is_ascii_uppercase() {
            true => s.extend(['_', c.to_ascii_lowercase()]),
            false => s.push(c),
        }
    }
    s
}

fn alternatives(alts: &[Vec<Item>]) -> String {
    let (empty, full): (Vec<_>, Vec<_>) = alts.iter().partition(|a| a.iter().all(is_empty));
    let body: Vec<String> = full.iter().map(|seq| sequence(seq)).collect();
    match (empty.is_empty(), body.is_empty()) {
        (true, _) => body.join(" | "),
        // Lark has no empty alternative: an optional group says the same.
        (false, false) => format!("({})?", body.join(" | ")),
        (false, true) => "\"\"".to_string(),
    }
}

fn is_empty(item: &Item) -> bool {
    match item {
        Item::Literal(l) => l.is_empty(),
        Item::Group(g) => g.iter().all(|a| a.iter().all(is_empty)),
        Item::Repeat(i, _, max) => *max == Some(0) || is_empty(i),
        _ => false,
    }
}

fn sequence(seq: &[Item]) -> String {
    let parts: Vec<String> = seq.iter().filter(|i| !is_empty(i)).map(item).collect();
    parts.join(" ")
}

fn item(i: &Item) -> String {
    match i {
        Item::Literal(l) => literal(l),
        Item::Class { negated, ranges } => {
            let mut s = String::from(if *negated { "/[^" } else { "/[" });
            for &(a, b) in ranges {
                let _ = write!(s, "\\x{{{:X}}}", a as u32);
                if a != b {
                    let _ = write!(s, "-\\x{{{:X}}}", b as u32);
                }
            }
            s + "]/"
        }
        Item::Any => "/(?s:.)/".to_string(),
        Item::Rule(n) => lark_name(n),
        Item::Group(g) => format!("({})", alternatives(g)),
        Item::Repeat(inner, min, max) => repeat(&item(inner), *min, *max),
    }
}

/// `x{min,max}` spelled out as llama.cpp expands it: `min` copies, then
/// `x*`, or nested optionals up to `max`.
fn repeat(x: &str, min: usize, max: Option<usize>) -> String {
    match (min, max) {
        (0, None) => format!("({x})*"),
        (1, None) => format!("({x})+"),
        (0, Some(1)) => format!("({x})?"),
        _ => {
            let mut parts = vec![format!("({x})"); min];
            match max {
                None => parts.push(format!("({x})*")),
                Some(max) => {
                    let tail = (min..max).fold(String::new(), |acc, _| match acc.is_empty() {
                        true => format!("({x})?"),
                        false => format!("(({x}) {acc})?"),
                    });
                    parts.extend((!tail.is_empty()).then_some(tail));
                }
            }
            format!("({})", parts.join(" "))
        }
    }
}

/// A Lark (JSON-syntax) string: printable ASCII as is, the rest escaped.
fn literal(l: &[char]) -> String {
    let mut s = String::from("\"");
    for &c in l {
        match c {
            '"' | '\\' => s.extend(['\\', c]),
            ' '..='~' => s.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(s, "\\u{u:04x}");
                }
            }
        }
    }
    s + "\""
}

struct Reader {
    s: Vec<char>,
    i: usize,
}

impl Reader {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn at(&self) -> String {
        let rest: String = self.s[self.i.min(self.s.len())..].iter().take(20).collect();
        match rest.is_empty() {
            true => "the end".to_string(),
            false => format!("{rest:?}"),
        }
    }

    /// Spaces, tabs and `#` comments; newlines too when `newlines`.
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.i += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\r' && c != '\n') {
                        self.i += 1;
                    }
                }
                '\r' | '\n' if newlines => self.i += 1,
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
            self.i += 1;
        }
        ensure!(self.i > start, "GBNF: expecting a rule name at {}", self.at());
        Ok(self.s[start..self.i].iter().collect())
    }

    fn rule(&mut self) -> Result<(String, Vec<Vec<Item>>)> {
        let name = self.name()?;
        self.space(false);
        ensure!(
            self.s[self.i..].starts_with(&[':', ':', '=']),
            "GBNF: expecting '::=' after rule '{name}' at {}",
            self.at()
        );
        self.i += 3;
        self.space(true);
        let alts = self.alternatives(false)?;
        match self.peek() {
            Some('\r') | Some('\n') | None => self.space(true),
            _ => bail!("GBNF: expecting a newline or the end at {}", self.at()),
        }
        Ok((name, alts))
    }

    fn alternatives(&mut self, nested: bool) -> Result<Vec<Vec<Item>>> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.i += 1;
            self.space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, nested: bool) -> Result<Vec<Item>> {
        let mut seq = Vec::new();
        while let Some(c) = self.peek() {
            let item = match c {
                '"' => {
                    self.i += 1;
                    Item::Literal(self.literal()?)
                }
                '[' => {
                    self.i += 1;
                    self.class()?
                }
                '.' => {
                    self.i += 1;
                    Item::Any
                }
                '(' => {
                    self.i += 1;
                    self.space(true);
                    let g = self.alternatives(true)?;
                    ensure!(self.peek() == Some(')'), "GBNF: expecting ')' at {}", self.at());
                    self.i += 1;
                    Item::Group(g)
                }
                '<' | '!' => bail!("GBNF token references (<...>, !<...>) are not supported by infllm"),
                c if c.is_ascii_alphanumeric() || c == '-' => Item::Rule(self.name()?),
                '*' | '+' | '?' | '{' => {
                    let last = seq
                        .pop()
                        .with_context(|| format!("GBNF: '{c}' with nothing before it at {}", self.at()))?;
                    self.repetition(last)?
                }
                _ => break,
            };
            seq.push(item);
            self.space(nested);
        }
        Ok(seq)
    }

    fn repetition(&mut self, last: Item) -> Result<Item> {
        let c = self.peek().unwrap_or_default();
        self.i += 1;
        let (min, max) = match c {
            '*' => (0, None),
            '+' => (1, None),
            '?' => (0, Some(1)),
            _ => self.braces()?,
        };
        Ok(Item::Repeat(Box::new(last), min, max))
    }

    /// `{m}`, `{m,}`, `{m,n}` (after the `{`).
    fn braces(&mut self) -> Result<(usize, Option<usize>)> {
        self.space(false);
        let min = self.int()?;
        self.space(false);
        let max = match self.peek() {
            Some(',') => {
                self.i += 1;
                self.space(false);
                match self.peek() {
                    Some('}') => None,
                    _ => Some(self.int()?),
                }
            }
            _ => Some(min),
        };
        self.space(false);
        ensure!(self.peek() == Some('}'), "GBNF: expecting '}}' at {}", self.at());
        self.i += 1;
        if let Some(max) = max {
            ensure!(
                max >= min,
                "GBNF: repetition {{{min},{max}}}: the maximum is below the minimum"
            );
        }
        Ok((min, max))
    }

    fn int(&mut self) -> Result<usize> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits: String = self.s[start..self.i].iter().collect();
        let n: usize = digits
            .parse()
            .map_err(|_| anyhow::anyhow!("GBNF: expecting a number at {}", self.at()))?;
        // Each copy is spelled out: a bound keeps the grammar small.
        ensure!(n <= MAX_REPEAT, "GBNF: repetition count {n} is over {MAX_REPEAT}");
        Ok(n)
    }

    /// A literal's characters (after the opening `"`).
    fn literal(&mut self) -> Result<Vec<char>> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => bail!("GBNF: unterminated string"),
                Some('"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(_) => out.push(self.char()?),
            }
        }
    }

    /// A character class (after the `[`).
    fn class(&mut self) -> Result<Item> {
        let negated = self.peek() == Some('^');
        self.i += negated as usize;
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None => bail!("GBNF: unterminated character class"),
                Some(']') => {
                    self.i += 1;
                    return Ok(Item::Class { negated, ranges });
                }
                Some(_) => {
                    let a = self.char()?;
                    let b = match (self.peek(), self.s.get(self.i + 1)) {
                        (Some('-'), Some(&n)) if n != ']' => {
                            self.i += 1;
                            self.char()?
                        }
                        _ => a,
                    };
                    ensure!(b >= a, "GBNF: character range {a:?}-{b:?} is backwards");
                    ranges.push((a, b));
                }
            }
        }
    }

    /// One character of a literal or class, escapes decoded as llama.cpp does.
    fn char(&mut self) -> Result<char> {
        let c = self.peek().context("GBNF: unexpected end of input")?;
        self.i += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.peek().context("GBNF: unexpected end of input after '\\'")?;
        self.i += 1;
        let hex = |r: &mut Self, n: usize| -> Result<char> {
            let digits: String = r.s[r.i..(r.i + n).min(r.s.len())].iter().collect();
            r.i += n;
            u32::from_str_radix(&digits, 16)
                .ok()
                .filter(|_| digits.len() == n)
                .and_then(char::from_u32)
                .with_context(|| format!("GBNF: bad escape \\{e}{digits}"))
        };
        match e {
            'x' => hex(self, 2),
            'u' => hex(self, 4),
            'U' => hex(self, 8),
            't' => Ok('\t'),
            'r' => Ok('\r'),
            'n' => Ok('\n'),
            '\\' | '"' | '[' | ']' => Ok(e),
            _ => bail!("GBNF: unknown escape \\{e}"),
        }
    }
}

/// The largest `{m,n}` count.
const MAX_REPEAT: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_literals_classes_repeats() {
        let g = "root ::= (\"yes\" | \"no\") \".\" # answer\nnum-Big ::= [0-9a]{2,3} [^\\n]* .\n";
        let lark = to_lark(g).unwrap();
        assert!(lark.starts_with("start: r-root\n"), "{lark}");
        assert!(lark.contains("r-root: (\"yes\" | \"no\") \".\""), "{lark}");
        assert!(
            lark.contains(
                "r-num-_big: ((/[\\x{30}-\\x{39}\\x{61}]/) (/[\\x{30}-\\x{39}\\x{61}]/) (/[\\x{30}-\\x{39}\\x{61}]/)?)"
            ),
            "{lark}"
        );
        assert!(lark.contains("(/[^\\x{A}]/)* /(?s:.)/"), "{lark}");
    }

    #[test]
    fn multi_line_groups_and_empty_alternatives() {
        let lark = to_lark("root ::= (\n  \"a\" |\n  \"\"\n)\n").unwrap();
        assert!(lark.contains("r-root: ((\"a\")?)"), "{lark}");
    }

    #[test]
    fn errors_name_the_problem() {
        for (g, want) in [
            ("root ::= \"a", "unterminated string"),
            ("root ::= x", "does not define it"),
            ("main ::= \"a\"", "no 'root' rule"),
            ("root := \"a\"", "'::='"),
            ("root ::= <think>", "not supported"),
            ("root ::= \"a\"{3,2}", "below the minimum"),
            ("root ::= \"\\q\"", "unknown escape"),
            ("root ::= \"a\" )", "expecting a newline"),
        ] {
            let e = to_lark(g).unwrap_err().to_string();
            assert!(e.contains(want), "{g}: {e}");
        }
    }
}
