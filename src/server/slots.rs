//! llama-server's `/slots/{id}?action=save|restore|erase`: a slot's
//! conversation to and from a session file in `--slot-save-path`.

use std::time::Instant;

use axum::http::StatusCode;
use serde_json::json;

use super::api::{check_filename, ApiError};
use super::memory::{Held, Place, Record};
use super::worker::Worker;
use crate::session::SessionFile;

impl Worker {
    pub fn slot_action(
        &mut self,
        id: usize,
        action: &str,
        filename: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        if !self.spill.persistent {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_supported_error",
                "slot actions need --slot-save-path",
            ));
        }
        if id >= self.slots.len() {
            return Err(ApiError::bad_request(format!(
                "slot {id} does not exist (0..{}, -np)",
                self.slots.len()
            )));
        }
        if self.slots.busy[id] {
            return Err(ApiError::unavailable(format!("slot {id} is processing a request")));
        }
        let file = || {
            let name = filename.ok_or_else(|| ApiError::bad_request("filename is missing"))?;
            check_filename(name)?;
            Ok::<_, ApiError>((name.to_string(), self.spill.path.join(name)))
        };
        let start = Instant::now();
        let ms = |start: Instant| start.elapsed().as_secs_f64() * 1e3;
        match action {
            "save" => {
                let (name, path) = file()?;
                let n_saved = self.save_slot(id, &path)?;
                let n_written = std::fs::metadata(&path).map_or(0, |m| m.len());
                Ok(
                    json!({"id_slot": id, "filename": name, "n_saved": n_saved, "n_written": n_written,
                          "timings": {"save_ms": ms(start)}}),
                )
            }
            "restore" => {
                let (name, path) = file()?;
                let n_restored = self.restore_slot(id, &path)?;
                let n_read = std::fs::metadata(&path).map_or(0, |m| m.len());
                Ok(
                    json!({"id_slot": id, "filename": name, "n_restored": n_restored, "n_read": n_read,
                          "timings": {"restore_ms": ms(start)}}),
                )
            }
            "erase" => {
                let n_erased = match self.pool.in_slot(id) {
                    Some(h) => self.pool.held.remove(&h).map_or(0, |h| h.tokens.len()),
                    None => 0,
                };
                self.slots.at(id).clear();
                Ok(json!({"id_slot": id, "n_erased": n_erased}))
            }
            other => Err(ApiError::bad_request(format!(
                "unknown action {} (save, restore or erase)",
                crate::quote::quoted(other)
            ))),
        }
    }

    fn save_slot(&mut self, id: usize, path: &std::path::Path) -> Result<usize, ApiError> {
        let held = self
            .pool
            .in_slot(id)
            .ok_or_else(|| ApiError::bad_request(format!("slot {id} holds no conversation")))?;
        let h = &self.pool.held[&held];
        let record = serde_json::to_value(Record {
            text: h.text.clone(),
            tokens: h.tokens.clone(),
        })
        .map_err(|e| ApiError::server(e.to_string()))?;
        let saved = SessionFile::open(path).and_then(|f| crate::session::save(&f, &*self.slots.at(id), record));
        saved.map_err(|e| ApiError::server(format!("{e:#}")))?;
        Ok(h.tokens.len())
    }

    /// Loads `path` into slot `id`; the conversation it held is parked.
    fn restore_slot(&mut self, id: usize, path: &std::path::Path) -> Result<usize, ApiError> {
        if !path.is_file() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!("no slot file {}", path.display()),
            ));
        }
        let file = SessionFile::open(path).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        self.vacate(id, None)?;
        let engine = self.slots.at(id);
        let n_vocab = engine.tokenizer().n_vocab();
        let r = crate::session::load(&file, engine, |saved, n_past| Record::read(saved, n_past, n_vocab))
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let n = r.tokens.len();
        self.pool.add(Held {
            text: r.text,
            tokens: r.tokens,
            logits: Vec::new(),
            before: None,
            place: Place::Slot(id),
            used: 0,
        });
        Ok(n)
    }
}
