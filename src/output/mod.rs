//! Output: ordered, durable JSONL records and the errors file, plus the
//! resume index that lets a rerun skip what is already done.

pub mod record;
pub mod resume;
pub mod writer;
