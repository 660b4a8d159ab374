//! Conversations: chat templates and turns over one engine.

pub mod builtin;
pub mod conversation;
pub mod template;

pub use conversation::{read_prefix, Answer, Conversation, Stop, TurnRead, TurnStats};
pub use template::{ChatTemplate, Message};
