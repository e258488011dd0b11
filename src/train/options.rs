//! The choices a run configuration makes, as types. Each serialises to the lower-case word
//! that `config.toml` files have always held and that the command line accepts (with the
//! `cli` feature, every one is a `clap::ValueEnum`).

use serde::{Deserialize, Serialize};

pub use crate::prog::search::{DepthGrowth, SearchSpace};

/// How the model grows over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The full model throughout (`none`).
    #[serde(rename = "none")]
    #[cfg_attr(feature = "cli", value(name = "none"))]
    Full,
    /// Progressive learning: resolution and depth rise over equal stages, MoGrow at each.
    Prog,
    /// AutoProg: a supernet search at the start of every stage but the last picks the
    /// stage's resolution and depth.
    #[default]
    Auto,
}

/// Which weights MoGrow grows from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum GrowFrom {
    /// The slowest EMA (as the paper); the weights when the run keeps no EMA.
    #[default]
    Ema,
    /// The weights being trained.
    Weights,
    /// Whichever of the weights and every EMA validated best at the last evaluation (ties
    /// go to the EMA listed last; before any evaluation, the slowest EMA).
    Best,
}

/// The AdamW moments of grown blocks and of the sub-network a search recycles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptState {
    /// Fresh moments and bias correction (as the paper).
    #[default]
    Reset,
    /// Copied from the source blocks, with the step count kept.
    Copy,
}

/// What a search candidate costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SearchCost {
    /// Its step time measured on the device (as the paper).
    #[default]
    Time,
    /// Its step's FLOPs: the same choice on every run and device.
    Flops,
}

/// What activations are stored in (mixed precision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f16 where the adapter has f16 shaders (`SHADER_F16`), else f32.
    #[default]
    Auto,
    /// f32 throughout.
    F32,
    /// f16 activations and weight copies with f32 master weights, optimizer state and
    /// reductions, and dynamic loss scaling.
    F16,
}

impl Precision {
    /// The element type activations are stored in on `ctx`'s adapter, and why.
    pub fn resolve(self, ctx: &crate::GpuContext) -> crate::Result<(crate::gpu::Element, &'static str)> {
        use crate::gpu::Element;
        let has_f16 = ctx.has_f16();
        match self {
            Precision::F32 => Ok((Element::F32, "as asked (--precision f32)")),
            Precision::F16 if has_f16 => Ok((Element::F16, "as asked (--precision f16)")),
            Precision::F16 => {
                Err(crate::Error::missing_f16(format!("--precision f16 on {}", ctx.summary.display_name())))
            }
            Precision::Auto if has_f16 => Ok((Element::F16, "auto: the adapter has f16 shaders")),
            Precision::Auto => Ok((Element::F32, "auto: the adapter has no f16 shaders")),
        }
    }
}

/// The option a word names, if any (the reverse of [`name`]).
pub fn parse<T: serde::de::DeserializeOwned>(word: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(word.to_string())).ok()
}

/// The word an option is written as (in `config.toml`, on the command line, in the run log).
pub fn name<T: Serialize>(option: &T) -> String {
    match serde_json::to_value(option) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("options serialise to a word"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_written_as_the_words_old_configs_hold() {
        assert_eq!(name(&Schedule::Full), "none");
        assert_eq!(name(&Schedule::Auto), "auto");
        assert_eq!(name(&GrowFrom::Best), "best");
        assert_eq!(name(&OptState::Copy), "copy");
        assert_eq!(name(&SearchCost::Flops), "flops");
        assert_eq!(name(&DepthGrowth::Schedule), "schedule");
        assert_eq!(name(&SearchSpace::Anchored), "anchored");
        assert_eq!(parse::<SearchSpace>("official"), Some(SearchSpace::Official));
        assert_eq!(name(&Precision::F16), "f16");
        assert_eq!(parse::<Precision>("auto"), Some(Precision::Auto));
        assert_eq!(parse::<Schedule>("prog"), Some(Schedule::Prog));
        assert_eq!(parse::<Schedule>("none"), Some(Schedule::Full));
        assert_eq!(parse::<Schedule>("fixed"), None);
    }
}
