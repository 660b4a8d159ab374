//! The command line read as llama.cpp reads it, then handed to clap: every
//! llama.cpp name of a flag infllm has reaches that flag (`-tb`, `-ngl`,
//! and llama-bench's for `infllm bench`,
//! `--n_predict`, `--temperature`), a flag's value is taken whole even when
//! it starts with a dash (`--temp -1`, `-p "-x"`), a llama.cpp flag infllm
//! lacks is one clear error, and `LLAMA_ARG_*` variables set the flags they
//! name unless the command line does. A repeated flag: the last one wins
//! (clap's `args_override_self`).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};

use clap::Command;

use super::llama_flags::{LlamaFlag, Tools, B, C, LLAMA_FLAGS, P, S};

/// How many values a clap flag takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Arity {
    Switch,
    One,
    /// `--color [WHEN]`: a value only when joined with `=`.
    Optional,
}

/// An infllm flag: the spelling clap is given, and its arity.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    arity: Arity,
}

/// The command line `args` (program name first) rewritten for `cmd`, with
/// the environment's `LLAMA_ARG_*` flags in front; an unsupported llama.cpp
/// flag is an error message.
pub fn rewrite(
    args: Vec<OsString>,
    cmd: &Command,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, String> {
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let rest: Vec<OsString> = args.collect();
    let (ctx, rest) = match rest
        .first()
        .and_then(|a| a.to_str())
        .and_then(|a| cmd.find_subcommand(a))
    {
        Some(sub) => {
            out.push(rest[0].clone());
            (sub, &rest[1..])
        }
        None => (cmd, &rest[..]),
    };
    let reader = Reader {
        known: known_flags(ctx),
        tools: tools_of(ctx.get_name()),
    };
    let (flags, given) = reader.command_line(rest)?;
    out.extend(reader.env_flags(&given, env)?);
    out.extend(flags);
    Ok(out)
}

/// The infllm flag that the name `name` of a llama.cpp flag reaches in
/// `cmd` (a command or sub-command), or the error it gets; None: a name
/// neither knows.
pub fn reaches(cmd: &Command, name: &str) -> Result<Option<String>, String> {
    let reader = Reader {
        known: known_flags(cmd),
        tools: tools_of(cmd.get_name()),
    };
    Ok(reader.resolve(name)?.map(|k| k.name))
}

/// The llama.cpp tool an infllm command stands for.
fn tools_of(command: &str) -> Tools {
    match command {
        "serve" => S,
        "perplexity" => P,
        "infllm" => C,
        "bench" => B,
        _ => 0,
    }
}

/// Every name of `cmd`'s flags (`--long`, its aliases, `-s`).
fn known_flags(cmd: &Command) -> HashMap<String, Known> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut known = HashMap::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_positional()) {
        let arity = match arg.get_num_args() {
            _ if !arg.get_action().takes_values() => Arity::Switch,
            Some(r) if r.min_values() == 0 => Arity::Optional,
            _ => Arity::One,
        };
        let longs = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default());
        let shorts = arg
            .get_short()
            .into_iter()
            .chain(arg.get_all_short_aliases().unwrap_or_default());
        let names: Vec<String> = longs
            .map(|l| format!("--{l}"))
            .chain(shorts.map(|s| format!("-{s}")))
            .collect();
        let Some(main) = names.first() else { continue };
        let k = Known {
            name: main.clone(),
            arity,
        };
        known.extend(names.iter().map(|n| (n.clone(), k.clone())));
    }
    known
}

struct Reader {
    known: HashMap<String, Known>,
    tools: Tools,
}

impl Reader {
    /// The flags rewritten, and the infllm flags they set.
    fn command_line(&self, args: &[OsString]) -> Result<(Vec<OsString>, HashSet<String>), String> {
        let mut out = Vec::new();
        let mut given = HashSet::new();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let Some(text) = arg.to_str().filter(|t| t.starts_with('-') && *t != "-") else {
                out.push(arg.clone());
                continue;
            };
            if text == "--" {
                out.extend_from_slice(&args[i - 1..]);
                break;
            }
            let (name, joined) = split_flag(text);
            let Some(k) = self.resolve(&name)? else {
                out.push(arg.clone());
                continue;
            };
            given.insert(k.name.clone());
            match (joined, k.arity) {
                (Some(v), _) => out.push(with_value(&k.name, OsStr::new(v))),
                (None, Arity::One) if i < args.len() => {
                    out.push(with_value(&k.name, &args[i]));
                    i += 1;
                }
                _ => out.push(k.name.into()),
            }
        }
        Ok((out, given))
    }

    /// The infllm flag a name means: its own, another name of the same
    /// llama.cpp flag, an error for a llama.cpp flag infllm lacks, or None
    /// for a name neither knows (clap reports it).
    fn resolve(&self, name: &str) -> Result<Option<Known>, String> {
        if let Some(k) = self.known.get(name) {
            return Ok(Some(k.clone()));
        }
        let Some(flag) = self.llama_flag(name) else {
            return Ok(None);
        };
        let side = match flag.names.contains(&name) {
            true => flag.names,
            false => flag.negations,
        };
        match side.iter().find_map(|n| self.known.get(*n)) {
            Some(k) => Ok(Some(k.clone())),
            None => Err(format!("invalid argument: {name} (not supported by infllm)")),
        }
    }

    fn llama_flag(&self, name: &str) -> Option<&'static LlamaFlag> {
        LLAMA_FLAGS
            .iter()
            .filter(|f| f.tools & self.tools != 0)
            .find(|f| f.names.contains(&name) || f.negations.contains(&name))
    }

    /// Flags from llama.cpp's environment variables, for the infllm flags
    /// the command line leaves unset. Variables of flags infllm lacks are
    /// ignored (they may be meant for llama.cpp).
    fn env_flags(
        &self,
        given: &HashSet<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<OsString>, String> {
        let mut out = Vec::new();
        for flag in LLAMA_FLAGS.iter().filter(|f| f.tools & self.tools != 0) {
            let Some(var) = flag.env else { continue };
            let on = flag.names.iter().find_map(|n| self.known.get(*n));
            let off = flag.negations.iter().find_map(|n| self.known.get(*n));
            if [on, off].iter().flatten().any(|k| given.contains(&k.name)) {
                continue;
            }
            let negated = (!flag.negations.is_empty())
                .then(|| env(&var.replacen("LLAMA_ARG_", "LLAMA_ARG_NO_", 1)))
                .flatten()
                .map(|_| "0".to_string());
            let Some(value) = negated.or_else(|| env(var)) else {
                continue;
            };
            let chosen = match flag.takes_value {
                true => on.map(|k| with_value(&k.name, OsStr::new(&value))),
                false => match switch_value(&value) {
                    Some(true) => on.map(|k| k.name.clone().into()),
                    Some(false) => off.map(|k| k.name.clone().into()),
                    None => return Err(format!("{var}={value}: not a boolean (on|off|true|false|1|0)")),
                },
            };
            out.extend(chosen);
        }
        Ok(out)
    }
}

/// `--name=value` apart; `_` in a long name read as `-`, as llama.cpp does.
fn split_flag(text: &str) -> (String, Option<&str>) {
    if !text.starts_with("--") {
        return (text.to_string(), None);
    }
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (text, None),
    };
    (name.replace('_', "-"), value)
}

/// `--name=value` (clap then takes a value that starts with a dash).
fn with_value(name: &str, value: &OsStr) -> OsString {
    let mut s = OsString::from(name);
    s.push("=");
    s.push(value);
    s
}

/// llama.cpp's spellings of a switch's value in the environment.
pub(super) fn switch_value(v: &str) -> Option<bool> {
    match v {
        "on" | "enabled" | "true" | "1" => Some(true),
        "off" | "disabled" | "false" | "0" => Some(false),
        _ => None,
    }
}
