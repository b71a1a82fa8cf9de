//! The one integration-test binary: each module tests one capability end to end.
mod causal;
mod cli;
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod configs;
mod extractive;
mod hub;
mod merge;
mod pipe;
mod pipeline;
mod random_weights;
mod real_pipeline;
mod seq2seq;
