//! The ViT architecture: dimensions, presets, and the shapes that follow from them.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A timm-style VisionTransformer (class token, learned absolute position embedding,
/// pre-norm blocks, linear head on the class token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Side of the square input the position embedding was made for (R).
    pub image_size: usize,
    /// Patch side (P); `image_size` is a multiple of it.
    pub patch_size: usize,
    /// Input channels (3: RGB).
    #[serde(default = "three")]
    pub in_chans: usize,
    /// Embedding width (C).
    pub dim: usize,
    /// Blocks (L).
    pub depth: usize,
    /// Attention heads (NH); `dim` is a multiple of it.
    pub heads: usize,
    /// Hidden width of the MLP (timm: 4·C).
    pub mlp_hidden: usize,
    /// Output classes (K).
    pub classes: usize,
    /// LayerNorm epsilon (timm's ViT: 1e-6).
    #[serde(default = "layernorm_eps")]
    pub layernorm_eps: f64,
}

fn three() -> usize {
    3
}
fn layernorm_eps() -> f64 {
    1e-6
}

/// Named architectures: `micro` for runs of minutes in a browser (and tests), `nano` for
/// quick runs, `tiny` and `small` as DeiT-Ti and DeiT-S.
pub const PRESETS: [&str; 4] = ["micro", "nano", "tiny", "small"];

/// Upper bounds on every size of a model, checked by [`VitConfig::validate`]. They lie far
/// above any ViT trained (ViT-22B: width 6144, depth 48, MLP 24576; ImageNet-21k: 21 843
/// classes) and low enough that no tensor of a valid config has more than 2^31 elements,
/// so shapes never overflow, not even in wasm32's 32-bit `usize`, and a damaged or hostile
/// file cannot make a reader allocate terabytes.
pub mod limits {
    pub const IMAGE_SIZE: usize = 4096;
    pub const PATCH_SIZE: usize = 64;
    pub const IN_CHANS: usize = 16;
    pub const DIM: usize = 16384;
    pub const DEPTH: usize = 1024;
    pub const MLP_HIDDEN: usize = 65536;
    pub const CLASSES: usize = 100_000;
    /// Patches plus the class token: a 256 × 256 patch grid.
    pub const TOKENS: usize = 256 * 256 + 1;
}

impl VitConfig {
    /// A preset by name at `image_size` px with `classes` outputs.
    pub fn preset(name: &str, classes: usize) -> Result<VitConfig> {
        let (image_size, patch_size, dim, depth, heads) = match name {
            "micro" => (32, 4, 32, 4, 2),
            "nano" => (32, 4, 64, 6, 4),
            "tiny" => (224, 16, 192, 12, 3),
            "small" => (224, 16, 384, 12, 6),
            other => {
                return Err(Error::invalid(
                    "model",
                    format!("unknown model `{other}`; use one of {} or a .toml file", PRESETS.join(", ")),
                ))
            }
        };
        let config = VitConfig {
            image_size,
            patch_size,
            in_chans: 3,
            dim,
            depth,
            heads,
            mlp_hidden: 4 * dim,
            classes,
            layernorm_eps: 1e-6,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the dimensions fit together, with a message that says which do not.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("model config", msg));
        if [self.image_size, self.patch_size, self.in_chans, self.dim, self.depth, self.heads, self.mlp_hidden]
            .contains(&0)
        {
            return bad(format!("every size must be at least 1: {self:?}"));
        }
        if self.classes < 2 {
            return bad(format!("{} classes; a classifier needs at least 2", self.classes));
        }
        for (name, value, limit) in [
            ("image_size", self.image_size, limits::IMAGE_SIZE),
            ("patch_size", self.patch_size, limits::PATCH_SIZE),
            ("in_chans", self.in_chans, limits::IN_CHANS),
            ("dim", self.dim, limits::DIM),
            ("depth", self.depth, limits::DEPTH),
            ("mlp_hidden", self.mlp_hidden, limits::MLP_HIDDEN),
            ("classes", self.classes, limits::CLASSES),
        ] {
            if value > limit {
                return bad(format!(
                    "{name} {value} is above the largest this tool supports ({limit}); \
                     a file that says so is damaged, or the config has a typo"
                ));
            }
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}; pick e.g. {}",
                self.image_size,
                self.patch_size,
                self.image_size.div_ceil(self.patch_size) * self.patch_size
            ));
        }
        // Both sides are at most 4096 here, so the product cannot overflow.
        if self.grid() * self.grid() + 1 > limits::TOKENS {
            return bad(format!(
                "image_size {} with patch_size {} makes {} tokens, above the {} supported; use larger patches",
                self.image_size,
                self.patch_size,
                self.grid() * self.grid() + 1,
                limits::TOKENS
            ));
        }
        if !self.dim.is_multiple_of(self.heads) {
            return bad(format!("dim {} is not a multiple of heads {}", self.dim, self.heads));
        }
        let hs = self.head_size();
        if hs > crate::kernels::attention::MAX_HEAD_SIZE {
            return bad(format!(
                "head size {hs} (dim {} / heads {}) is above the kernels' {}; use more heads",
                self.dim,
                self.heads,
                crate::kernels::attention::MAX_HEAD_SIZE
            ));
        }
        if self.layernorm_eps.is_nan() || self.layernorm_eps <= 0.0 {
            return bad(format!("layernorm_eps {} must be positive", self.layernorm_eps));
        }
        Ok(())
    }

    /// HS = C / NH.
    pub fn head_size(&self) -> usize {
        self.dim / self.heads
    }

    /// Patches per side of the position-embedding grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens at resolution `resolution` (patches + the class token).
    pub fn tokens_at(&self, resolution: usize) -> usize {
        let g = resolution / self.patch_size;
        g * g + 1
    }

    /// Values per flattened patch: Ch·P·P.
    pub fn patch_values(&self) -> usize {
        self.in_chans * self.patch_size * self.patch_size
    }

    /// Floating-point operations of one training step (forward + backward, 3× the forward's
    /// multiply-adds ×2) per image at `resolution` with `depth` blocks: the matmuls and the
    /// attention products; elementwise work is left out, as is usual.
    pub fn train_flops_per_image(&self, resolution: usize, depth: usize) -> f64 {
        3.0 * self.forward_flops_per_image(resolution, depth)
    }

    /// Forward FLOPs (2 per multiply-add) per image, counted as in [`Self::train_flops_per_image`].
    pub fn forward_flops_per_image(&self, resolution: usize, depth: usize) -> f64 {
        let n = self.tokens_at(resolution) as f64;
        let np = n - 1.0;
        let c = self.dim as f64;
        let h = self.mlp_hidden as f64;
        let patch = np * self.patch_values() as f64 * c;
        let linears = n * (3.0 * c * c + c * c + 2.0 * c * h);
        let attention = 2.0 * n * n * c;
        let head = c * self.classes as f64;
        2.0 * (patch + depth as f64 * (linears + attention) + head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_deit() {
        let tiny = VitConfig::preset("tiny", 1000).unwrap();
        assert_eq!((tiny.dim, tiny.depth, tiny.heads, tiny.mlp_hidden, tiny.patch_size), (192, 12, 3, 768, 16));
        // DeiT-Ti: about 1.3 GFLOPs (multiply-adds) per 224 px image.
        let macs = tiny.forward_flops_per_image(224, 12) / 2.0;
        assert!((1.2e9..1.35e9).contains(&macs), "{macs}");
        let nano = VitConfig::preset("nano", 10).unwrap();
        assert_eq!((nano.dim, nano.depth, nano.heads, nano.grid()), (64, 6, 4, 8));
        let micro = VitConfig::preset("micro", 10).unwrap();
        assert_eq!((micro.dim, micro.depth, micro.heads, micro.mlp_hidden), (32, 4, 2, 128));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = VitConfig::preset("huge", 10).unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("nano"), "{err}");
        let mut c = VitConfig::preset("nano", 10).unwrap();
        c.image_size = 30;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("30") && err.contains("32"), "{err}");
        c.image_size = 32;
        c.heads = 5;
        assert!(c.validate().unwrap_err().to_string().contains("heads 5"));
    }

    #[test]
    fn sizes_beyond_the_limits_are_refused() {
        let nano = VitConfig::preset("nano", 10).unwrap();
        let with = |change: &dyn Fn(&mut VitConfig)| {
            let mut c = nano.clone();
            change(&mut c);
            c
        };
        let cases = [
            ("dim 1000000000", with(&|c| c.dim = 1_000_000_000)),
            ("depth 1000000000", with(&|c| c.depth = 1_000_000_000)),
            ("mlp_hidden 4294967296", with(&|c| c.mlp_hidden = 1 << 32)),
            ("classes 2147483648", with(&|c| c.classes = 1 << 31)),
            ("image_size 8192", with(&|c| c.image_size = 8192)),
            (
                "patch_size 1 makes",
                with(&|c| {
                    c.image_size = 4096;
                    c.patch_size = 1
                }),
            ),
        ];
        for (expected, config) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        // At every limit at once, the largest tensor still has fewer than 2^31 elements.
        let largest = VitConfig {
            image_size: 4096,
            patch_size: 16,
            in_chans: limits::IN_CHANS,
            dim: limits::DIM,
            depth: 1,
            heads: limits::DIM / 64,
            mlp_hidden: limits::MLP_HIDDEN,
            classes: limits::CLASSES,
            layernorm_eps: 1e-6,
        };
        largest.validate().unwrap();
        let biggest = [
            largest.dim as u64 * largest.mlp_hidden as u64,
            largest.classes as u64 * largest.dim as u64,
            limits::TOKENS as u64 * largest.dim as u64,
            (largest.dim * limits::IN_CHANS * limits::PATCH_SIZE * limits::PATCH_SIZE) as u64,
        ];
        assert!(biggest.iter().all(|&n| n < 1 << 31), "{biggest:?}");
    }
}
