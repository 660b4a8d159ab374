//! Hostile chat templates (a model file's `tokenizer.chat_template`):
//! `SOURCE \0 MESSAGE \x01 MESSAGE ...`. Compiling and rendering end, within
//! the template fuel, in text or a one-line error.
#![no_main]

use infllm::chat::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: infllm_fuzz::seed_corpus("chat_template", infllm_fuzz::seeds::templates), |data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (source, contents) = text.split_once('\0').unwrap_or((&text, ""));
    let template = match ChatTemplate::from_source("fuzz", source, "<s>", "</s>") {
        Ok(t) => t,
        Err(e) => return infllm_fuzz::assert_one_line(&e),
    };
    let roles = ["system", "user", "assistant", "user"];
    let messages: Vec<Message> = contents
        .split('\x01')
        .zip(roles.iter().cycle())
        .map(|(content, role)| Message::new(role, content))
        .collect();
    for generation_prompt in [true, false] {
        if let Err(e) = template.render(&messages, generation_prompt) {
            infllm_fuzz::assert_one_line(&e);
        }
    }
});
