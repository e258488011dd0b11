//! AutoProg as pure logic: plain data in, plain data out, no GPU. The trainer drives the
//! model with what these functions decide.
//!
//! - [`schedule`]: the stages of progressive learning (start epoch, resolution, depth and
//!   the regularisation of each), linear from a fraction of the full size up to it.
//! - [`grow`]: MoGrow's depth mapping (which old layer each new layer copies) and the
//!   elastic supernet's active layers for each candidate depth.
//! - [`search`]: the candidate sub-networks of a stage, the power-law fit of loss against
//!   step time, and the choice of the winner.

pub mod grow;
pub mod schedule;
pub mod search;
