//! The parameters of a ViT: timm's state-dict names and shapes, their place in one flat
//! arena (the layout AdamW and EMA run over in one dispatch), and timm's initialisation.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{Checkpoint, NamedTensor};
use std::collections::{HashMap, HashSet};

use crate::model::config::limits;
use crate::model::VitConfig;
use crate::{Error, Result};

/// One parameter tensor: its timm name, shape and place in the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// First element in the arena.
    pub offset: usize,
    /// Whether AdamW decays it (matrices); biases, norms and tokens are not decayed, as timm.
    pub decay: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The element range of this tensor in the arena.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// A part of the gradients that the backward pass finishes at once (see
/// [`GpuVit::backward_in_parts`](crate::model::GpuVit::backward_in_parts)): the head and
/// final norm first, then each block from the last, then the embeddings (the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradPart {
    Head,
    Block(usize),
    Embeddings,
}

/// Where every parameter of a ViT of some depth sits in one flat arena. Decayed tensors
/// come first so that AdamW's weight decay covers `[0, decay_end)`; every offset is a
/// multiple of `align` elements so that each tensor can be bound as a storage view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    /// In timm's state-dict order.
    pub specs: Vec<ParamSpec>,
    /// Arena length in elements (padding included).
    pub len: usize,
    /// Where the non-decayed region starts.
    pub decay_end: usize,
}

/// The names and shapes of a ViT's parameters with `depth` blocks, in timm's order, and
/// whether each is weight-decayed.
pub fn param_shapes(config: &VitConfig, depth: usize) -> Vec<(String, Vec<usize>, bool)> {
    let (c, h, k, p, ch) = (config.dim, config.mlp_hidden, config.classes, config.patch_size, config.in_chans);
    let n = config.tokens_at(config.image_size);
    let mut out = vec![
        ("cls_token".to_string(), vec![1, 1, c], false),
        ("pos_embed".to_string(), vec![1, n, c], false),
        ("patch_embed.proj.weight".to_string(), vec![c, ch, p, p], true),
        ("patch_embed.proj.bias".to_string(), vec![c], false),
    ];
    for i in 0..depth {
        let b = |s: &str| format!("blocks.{i}.{s}");
        out.extend([
            (b("norm1.weight"), vec![c], false),
            (b("norm1.bias"), vec![c], false),
            (b("attn.qkv.weight"), vec![3 * c, c], true),
            (b("attn.qkv.bias"), vec![3 * c], false),
            (b("attn.proj.weight"), vec![c, c], true),
            (b("attn.proj.bias"), vec![c], false),
            (b("norm2.weight"), vec![c], false),
            (b("norm2.bias"), vec![c], false),
            (b("mlp.fc1.weight"), vec![h, c], true),
            (b("mlp.fc1.bias"), vec![h], false),
            (b("mlp.fc2.weight"), vec![c, h], true),
            (b("mlp.fc2.bias"), vec![c], false),
        ]);
    }
    out.extend([
        ("norm.weight".to_string(), vec![c], false),
        ("norm.bias".to_string(), vec![c], false),
        ("head.weight".to_string(), vec![k, c], true),
        ("head.bias".to_string(), vec![k], false),
    ]);
    out
}

impl ParamLayout {
    /// The layout of a ViT with `depth` blocks, offsets aligned to `align` elements
    /// (the adapter's storage-offset alignment, [`crate::GpuContext::arena_align`]).
    pub fn new(config: &VitConfig, depth: usize, align: usize) -> ParamLayout {
        let align = align.max(1);
        let shapes = param_shapes(config, depth);
        let mut offsets = vec![0; shapes.len()];
        let mut next = 0;
        for decayed in [true, false] {
            for (i, (_, shape, decay)) in shapes.iter().enumerate() {
                if *decay == decayed {
                    offsets[i] = next;
                    next = (next + shape.iter().product::<usize>()).next_multiple_of(align);
                }
            }
            if decayed {
                // `next` is where the first non-decayed tensor goes.
                offsets.push(next);
            }
        }
        let decay_end = offsets.pop().expect("pushed above");
        let specs = shapes
            .into_iter()
            .zip(offsets)
            .map(|((name, shape, decay), offset)| ParamSpec { name, shape, offset, decay })
            .collect();
        ParamLayout { specs, len: next.max(1), decay_end }
    }

    /// The spec of `name`; panics on a name the layout does not have (a programmer error:
    /// names come from [`param_shapes`]).
    pub fn spec(&self, name: &str) -> &ParamSpec {
        self.find(name).unwrap_or_else(|| panic!("no parameter named {name}"))
    }

    pub fn find(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Where `part`'s tensors lie in the arena; tensors next to each other (with only the
    /// alignment padding, which stays zero, between them) as one range.
    pub fn part_ranges(&self, part: GradPart) -> Vec<std::ops::Range<usize>> {
        let block = match part {
            GradPart::Block(i) => format!("blocks.{i}."),
            _ => String::new(),
        };
        let outside_blocks = |name: &str| !name.starts_with("blocks.");
        let head = |name: &str| name.starts_with("head.") || name.starts_with("norm.");
        let mut specs: Vec<&ParamSpec> = self
            .specs
            .iter()
            .filter(|s| match part {
                GradPart::Head => head(&s.name),
                GradPart::Block(_) => s.name.starts_with(&block),
                GradPart::Embeddings => outside_blocks(&s.name) && !head(&s.name),
            })
            .collect();
        specs.sort_by_key(|s| s.offset);
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            // Next to the previous one: no tensor of another part lies between them.
            let after = |s: &ParamSpec| i > 0 && s.offset > specs[i - 1].offset && s.offset < spec.offset;
            match ranges.last_mut() {
                Some(last) if !self.specs.iter().any(after) => last.end = spec.range().end,
                _ => ranges.push(spec.range()),
            }
        }
        ranges
    }

    /// Blocks (L) the layout holds.
    pub fn depth(&self) -> usize {
        self.specs.iter().filter(|s| s.name.ends_with(".norm1.weight")).count()
    }

    /// Parameters that are trained (padding excluded).
    pub fn count(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// The slice of `arena` that holds `name`.
    pub fn slice<'a, T>(&self, arena: &'a [T], name: &str) -> &'a [T] {
        &arena[self.spec(name).range()]
    }

    /// timm's initialisation, deterministic from `seed`: linear weights and the position
    /// embedding truncated normal (std 0.02, cut at ±2), linear biases 0, the class token
    /// normal (std 1e-6), LayerNorms weight 1 and bias 0, and the patch convolution
    /// PyTorch's Conv2d default (uniform ±1/sqrt(fan_in) for weight and bias).
    pub fn init(&self, config: &VitConfig, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut arena = vec![0.0f32; self.len];
        let fan_in = config.patch_values() as f64;
        for spec in &self.specs {
            let values = &mut arena[spec.range()];
            let name = spec.name.as_str();
            if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" {
                values.fill(1.0);
            } else if name == "cls_token" {
                values.iter_mut().for_each(|v| *v = (normal(&mut rng) * 1e-6) as f32);
            } else if name.starts_with("patch_embed.proj.") {
                let bound = 1.0 / fan_in.sqrt();
                values.iter_mut().for_each(|v| *v = ((2.0 * unit(&mut rng) - 1.0) * bound) as f32);
            } else if spec.decay || name == "pos_embed" {
                values.iter_mut().for_each(|v| *v = truncated_normal(&mut rng, 0.02, 2.0) as f32);
            }
            // Every other tensor (biases, norm biases) stays 0.
        }
        arena
    }
}

impl ParamLayout {
    /// The tensors of `arena` under their timm names, each prefixed with `prefix`
    /// (`""` for the model's weights, e.g. `"ema0.999."` for an EMA).
    pub fn to_tensors(&self, arena: &[f32], prefix: &str) -> Vec<NamedTensor> {
        self.specs
            .iter()
            .map(|s| NamedTensor::new(format!("{prefix}{}", s.name), s.shape.clone(), arena[s.range()].to_vec()))
            .collect()
    }

    /// An arena filled from the tensors named `prefix` + timm name in `checkpoint`; a
    /// missing tensor or a shape of another architecture is an error that names it. Every
    /// tensor is checked before the arena is allocated, so a file whose header describes a
    /// model larger than the weights it holds costs no memory.
    pub fn arena_from(&self, checkpoint: &Checkpoint, prefix: &str) -> Result<Vec<f32>> {
        // One pass over the file's tensors, so a file with very many cannot make the lookups
        // quadratic; misses go through `require` for its message.
        let by_name: HashMap<&str, &NamedTensor> = checkpoint.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let tensors = self
            .specs
            .iter()
            .map(|spec| {
                let name = format!("{prefix}{}", spec.name);
                match by_name.get(name.as_str()) {
                    Some(t) if t.shape == spec.shape => Ok(*t),
                    _ => checkpoint.require(&name, &spec.shape),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut arena = vec![0.0; self.len];
        for (spec, t) in self.specs.iter().zip(tensors) {
            arena[spec.range()].copy_from_slice(&t.data);
        }
        Ok(arena)
    }
}

/// How many blocks `checkpoint` holds under `prefix` (`blocks.0.` to `blocks.{n-1}.`, counted
/// by their first norm), looking at most `limit` far: a damaged file may claim any number.
pub fn blocks_present(checkpoint: &Checkpoint, prefix: &str, limit: usize) -> usize {
    // One pass over the file's tensors, so a file with very many cannot make this quadratic.
    let names: HashSet<&str> = checkpoint.tensors.iter().map(|t| t.name.as_str()).collect();
    (0..limit).take_while(|i| names.contains(format!("{prefix}blocks.{i}.norm1.weight").as_str())).count()
}

/// Parameters (padding excluded) of a ViT of `config` with `depth` blocks, counted in u64 so
/// that the sum cannot overflow a 32-bit `usize`. `config` must be valid (every tensor then
/// has fewer than 2^31 elements).
pub fn parameter_count(config: &VitConfig, depth: usize) -> u64 {
    param_shapes(config, depth).iter().map(|(_, shape, _)| shape.iter().product::<usize>() as u64).sum()
}

/// The architecture of a timm VisionTransformer state dict, from its tensor shapes: width,
/// depth, patch size, grid, MLP width and classes. The number of heads is not in the
/// shapes; it comes from the caller (`--heads` or a config file). Every shape is matched
/// whole, so a file of the wrong rank gets an error, never an index out of range.
pub fn infer_config(checkpoint: &Checkpoint, heads: usize) -> Result<VitConfig> {
    let shape = |name: &str| -> Result<&[usize]> {
        checkpoint.get(name).map(|t| t.shape.as_slice()).ok_or_else(|| {
            Error::format(
                "checkpoint",
                format!(
                    "it has no `{name}`, so it is not a timm VisionTransformer (class token, absolute position \
                    embedding)"
                ),
            )
        })
    };
    let not_vit = |name: &str, found: &[usize], expected: &str| {
        Error::format("checkpoint", format!("{name} is {found:?}; a timm VisionTransformer has {expected}"))
    };
    let (dim, in_chans, patch) = match shape("patch_embed.proj.weight")? {
        &[c, ch, p, q] if p == q && c > 0 && ch > 0 && p > 0 => (c, ch, p),
        other => return Err(not_vit("patch_embed.proj.weight", other, "[C, 3, P, P]")),
    };
    let tokens = match shape("pos_embed")? {
        &[1, n, c] if c == dim && n >= 2 => n,
        other => return Err(not_vit("pos_embed", other, &format!("[1, 1 + N, {dim}] with N >= 1 patches"))),
    };
    let grid = ((tokens - 1) as f64).sqrt().round() as usize;
    if grid.checked_mul(grid).and_then(|g| g.checked_add(1)) != Some(tokens) {
        return Err(Error::format(
            "checkpoint",
            format!("pos_embed has {tokens} positions, not a square grid plus a class token"),
        ));
    }
    // One past the limit is enough for validate() to refuse a deeper file.
    let depth = blocks_present(checkpoint, "", limits::DEPTH + 1);
    let mlp_hidden = if depth > 0 {
        match shape("blocks.0.mlp.fc1.weight")? {
            &[h, c] if c == dim => h,
            other => return Err(not_vit("blocks.0.mlp.fc1.weight", other, &format!("[H, {dim}]"))),
        }
    } else {
        4 * dim
    };
    let classes = match shape("head.weight")? {
        &[k, c] if c == dim => k,
        other => return Err(not_vit("head.weight", other, &format!("[classes, {dim}]"))),
    };
    let config = VitConfig {
        image_size: grid.saturating_mul(patch),
        patch_size: patch,
        in_chans,
        dim,
        depth,
        heads,
        mlp_hidden,
        classes,
        layernorm_eps: 1e-6,
    };
    config.validate()?;
    Ok(config)
}

/// Uniform in [0, 1) with 53 random bits.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Standard normal by Box–Muller.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - unit(rng); // (0, 1]: ln is finite
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Normal(0, std) redrawn until it lies in [-cut, cut] (timm's `trunc_normal_`, whose cut
/// is absolute, not in units of std).
fn truncated_normal(rng: &mut ChaCha8Rng, std: f64, cut: f64) -> f64 {
    loop {
        let x = normal(rng) * std;
        if x.abs() <= cut {
            return x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_parts_cover_every_tensor_once_and_nothing_twice() {
        let config = VitConfig::preset("nano", 10).unwrap();
        let layout = ParamLayout::new(&config, 3, 64);
        let parts = [GradPart::Head, GradPart::Block(2), GradPart::Block(1), GradPart::Block(0), GradPart::Embeddings];
        let ranges: Vec<(GradPart, std::ops::Range<usize>)> =
            parts.iter().flat_map(|&p| layout.part_ranges(p).into_iter().map(move |r| (p, r))).collect();
        // Every tensor lies inside exactly one range, which belongs to its part.
        for spec in &layout.specs {
            let holders: Vec<GradPart> = ranges
                .iter()
                .filter(|(_, r)| r.start <= spec.offset && spec.range().end <= r.end)
                .map(|(p, _)| *p)
                .collect();
            assert_eq!(holders.len(), 1, "{} in {holders:?}", spec.name);
        }
        // No two ranges overlap; so no gradient is summed twice.
        let mut sorted: Vec<_> = ranges.iter().map(|(_, r)| r.clone()).collect();
        sorted.sort_by_key(|r| r.start);
        assert!(sorted.windows(2).all(|w| w[0].end <= w[1].start), "{sorted:?}");
        // A block's weights and its biases and norms lie apart (decayed tensors first): two ranges.
        assert_eq!(layout.part_ranges(GradPart::Block(1)).len(), 2);
    }

    #[test]
    fn layout_has_timm_names_aligned_offsets_and_decay_first() {
        let config = VitConfig::preset("nano", 10).unwrap();
        let layout = ParamLayout::new(&config, 2, 64);
        assert_eq!(layout.spec("pos_embed").shape, [1, 65, 64]);
        assert_eq!(layout.spec("blocks.1.attn.qkv.weight").shape, [192, 64]);
        assert_eq!(layout.spec("patch_embed.proj.weight").shape, [64, 3, 4, 4]);
        assert!(layout.find("blocks.2.norm1.weight").is_none());
        for s in &layout.specs {
            assert_eq!(s.offset % 64, 0, "{}", s.name);
            assert_eq!(s.decay, s.range().end <= layout.decay_end, "{}", s.name);
        }
        // No overlaps: sorted by offset, each ends before the next starts.
        let mut ranges: Vec<_> = layout.specs.iter().map(ParamSpec::range).collect();
        ranges.sort_by_key(|r| r.start);
        assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
        // timm's ViT: 6 blocks of 12·C² + 13·C (C = 64) plus embeddings and head.
        let full = ParamLayout::new(&config, 6, 1);
        let (c, np, k) = (64, 64, 10);
        let expected = 6 * (12 * c * c + 13 * c) + (np + 1) * c + c + c * 48 + c + 2 * c + k * c + k;
        assert_eq!(full.count(), expected);
        assert_eq!(full.len, expected);
    }

    #[test]
    fn init_follows_timm() {
        let config = VitConfig::preset("nano", 10).unwrap();
        let layout = ParamLayout::new(&config, 6, 64);
        let a = layout.init(&config, 7);
        assert_eq!(a, layout.init(&config, 7), "deterministic");
        let stats = |name: &str| {
            let v = layout.slice(&a, name);
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var.sqrt())
        };
        let (mean, std) = stats("blocks.0.mlp.fc1.weight");
        assert!(mean.abs() < 2e-3 && (0.0185..0.0215).contains(&std), "{mean} {std}");
        assert_eq!(stats("blocks.3.norm2.weight"), (1.0, 0.0));
        assert_eq!(stats("blocks.3.attn.qkv.bias"), (0.0, 0.0));
        let (_, std) = stats("patch_embed.proj.weight");
        let expected = 1.0 / (48f64.sqrt() * 3f64.sqrt()); // uniform(±1/sqrt(48)) has std bound/sqrt(3)
        assert!((std / expected - 1.0).abs() < 0.1, "{std} vs {expected}");
        assert!(stats("cls_token").1 < 1e-5);
    }

    #[test]
    fn checkpoints_round_trip_and_reveal_the_architecture() -> Result<()> {
        let mut config = VitConfig::preset("nano", 7).unwrap();
        config.depth = 3;
        config.image_size = 28;
        let layout = ParamLayout::new(&config, 3, 16);
        let arena = layout.init(&config, 1);
        let mut ckpt = Checkpoint { tensors: layout.to_tensors(&arena, ""), ..Default::default() };
        ckpt.tensors.extend(layout.to_tensors(&arena, "ema0.9."));
        assert_eq!(layout.arena_from(&ckpt, "")?, arena);
        assert_eq!(layout.arena_from(&ckpt, "ema0.9.")?, arena);
        assert_eq!(infer_config(&ckpt, 4)?, config);
        // Another architecture: a wider model's layout asks for shapes the file lacks.
        let mut wide = config.clone();
        wide.dim = 96;
        let err = ParamLayout::new(&wide, 3, 16).arena_from(&ckpt, "").unwrap_err().to_string();
        assert!(err.contains("96") && err.contains("64"), "{err}");
        // Heads that do not divide the width are refused.
        assert!(infer_config(&ckpt, 5).is_err());
        Ok(())
    }

    #[test]
    fn shapes_of_the_wrong_rank_or_size_are_errors_not_panics() {
        let mut config = VitConfig::preset("nano", 7).unwrap();
        config.depth = 1;
        let layout = ParamLayout::new(&config, 1, 1);
        let good = Checkpoint { tensors: layout.to_tensors(&layout.init(&config, 1), ""), ..Default::default() };
        let with = |name: &str, shape: Vec<usize>| {
            let mut ckpt = good.clone();
            let t = ckpt.tensors.iter_mut().find(|t| t.name == name).unwrap();
            t.data = vec![0.0; shape.iter().product()];
            t.shape = shape;
            ckpt
        };
        for (name, shape, expected) in [
            ("head.weight", vec![], "head.weight is []"),
            ("head.weight", vec![0, 1 << 31], "head.weight is [0, 2147483648]"),
            ("head.weight", vec![1 << 31, 0], "head.weight is [2147483648, 0]"),
            ("pos_embed", vec![1, 0, 64], "pos_embed is [1, 0, 64]"),
            ("pos_embed", vec![1, 1, 64], "pos_embed is [1, 1, 64]"),
            ("pos_embed", vec![], "pos_embed is []"),
            ("patch_embed.proj.weight", vec![1 << 31, 3, 0, 0], "patch_embed.proj.weight is"),
            ("patch_embed.proj.weight", vec![64], "patch_embed.proj.weight is [64]"),
            ("blocks.0.mlp.fc1.weight", vec![7], "blocks.0.mlp.fc1.weight is [7]"),
        ] {
            let err = infer_config(&with(name, shape), 4).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        // Sizes within the shapes' rules but beyond the limits.
        let err = infer_config(&with("head.weight", vec![1 << 20, 64]), 4).unwrap_err().to_string();
        assert!(err.contains("classes 1048576"), "{err}");
    }
}
