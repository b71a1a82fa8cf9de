//! Fixtures shared by the integration tests (`tests/it`), one file per kind
//! of fixture.

pub mod tiny_bert;
pub mod tiny_gguf;
