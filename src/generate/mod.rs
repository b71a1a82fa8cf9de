//! Decoding shared by the model families: stopping rules, the repetition
//! guard and the length budget ([`decode`]), length-sorted token-budget
//! batches ([`batch`]) and the batched greedy and beam search of the
//! encoder-decoder families ([`search`]).

pub mod batch;
pub mod decode;
pub mod search;
pub mod softmax;
