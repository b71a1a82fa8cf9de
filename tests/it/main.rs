//! The one integration-test binary: each module tests one capability end to end.
mod extractive;
mod cli;
mod hub;
mod configs;
mod causal;
