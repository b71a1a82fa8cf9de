//! Text preparation: boilerplate cleaning, sentence segmentation and
//! source-language identification. All functions are pure and cheap to call
//! from rayon workers.

pub mod clean;
pub mod langid;
pub mod segment;
