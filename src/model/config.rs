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

/// Named architectures: `nano` for quick runs, `tiny` and `small` as DeiT-Ti and DeiT-S.
pub const PRESETS: [&str; 3] = ["nano", "tiny", "small"];

impl VitConfig {
    /// A preset by name at `image_size` px with `classes` outputs.
    pub fn preset(name: &str, classes: usize) -> Result<VitConfig> {
        let (image_size, patch_size, dim, depth, heads) = match name {
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
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}; pick e.g. {}",
                self.image_size,
                self.patch_size,
                self.image_size.div_ceil(self.patch_size) * self.patch_size
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
}
