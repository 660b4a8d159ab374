//! Session files (checksum set, so that mutations reach what it protects)
//! loaded into a conversation of a tiny model: a hostile file is refused in
//! one line and leaves the conversation as it was; one that loads leaves a
//! state the next turn runs on.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use infllm::chat::Conversation;
use infllm_fuzz::session;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CONV: RefCell<Conversation> = RefCell::new(session::conversation());
}

fn file() -> PathBuf {
    std::env::temp_dir().join(format!("infllm-fuzz-load-{}.session", std::process::id()))
}

fuzz_target!(init: infllm_fuzz::seed_corpus("session_load", session::seeds), |data: &[u8]| {
    let mut bytes = data.to_vec();
    session::fix_checksum(&mut bytes);
    std::fs::write(file(), &bytes).expect("write the session");
    CONV.with_borrow_mut(|conv| {
        conv.clear();
        match conv.load(&file()) {
            Err(e) => {
                infllm_fuzz::assert_one_line(&e);
                assert_eq!(conv.engine.n_past(), 0, "a refused session changed the state");
            }
            Ok(()) => {
                if let Err(e) = session::turn(conv, "Next?") {
                    infllm_fuzz::assert_one_line(&e);
                }
            }
        }
    });
});
