//! Decoding helpers shared by the model families: stopping rules, the
//! repetition guard and the length budget of a generation.

pub mod decode;
