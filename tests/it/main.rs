//! The one integration-test binary: each module tests one capability end to end.
mod extractive;
mod cli;
mod hub;
mod configs;
mod causal;
#[path = "../common/mod.rs"]
mod common;
mod real_pipeline;
mod pipeline;
