//! A trained model ready for inference, read from any checkpoint we accept (a training
//! checkpoint, an exported model file or a timm state dict), and the pieces around the forward
//! pass that the command line and the browser share: probabilities and the class token's
//! attention map. Images become inputs through [`crate::data::preprocess`], as in training.

use serde::Serialize;

pub use crate::checkpoint::schema::MODEL_FORMAT;
use crate::checkpoint::schema::{ema_prefix, meta};
use crate::checkpoint::{Checkpoint, NamedTensor, Storage};
use crate::model::{blocks_present, infer_config, parameter_count, ParamLayout, VitConfig};
use crate::{Error, Result};

/// ImageNet's mean and std, for checkpoints that carry no normalisation (timm's ViTs).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Tensors every ViT file has, whatever its size.
const VIT_TENSORS: [&str; 4] = ["patch_embed.proj.weight", "cls_token", "pos_embed", "head.weight"];

/// What to read from a checkpoint besides the file itself.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Attention heads, for files that do not say (timm state dicts); overrides the file's.
    pub heads: Option<usize>,
    /// Take this EMA of the weights (its decay) instead of the weights.
    pub ema: Option<f64>,
    /// Normalisation overriding the file's.
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

/// Weights under timm names with the architecture, the depth actually trained, class
/// names and input normalisation.
#[derive(Clone, Debug)]
pub struct InferenceModel {
    pub config: VitConfig,
    /// Blocks present in the weights (a progressive run's checkpoint may be shallower than
    /// `config.depth`).
    pub depth: usize,
    pub classes: Vec<String>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The weights (no prefix), exactly the tensors of `layout(…)`.
    weights: Vec<NamedTensor>,
}

impl InferenceModel {
    /// Reads the model out of `ckpt`; `what` (usually the file name) names it in errors.
    pub fn from_checkpoint(ckpt: &Checkpoint, what: &str, options: &LoadOptions) -> Result<InferenceModel> {
        let config = match (ckpt.get_json::<VitConfig>(meta::VIT)?, options.heads) {
            (Some(mut c), heads) => {
                if let Some(h) = heads {
                    c.heads = h;
                }
                c
            }
            (None, Some(heads)) => infer_config(ckpt, heads).map_err(|e| Error::format(what, e.to_string()))?,
            (None, None) => {
                // A file that is no ViT at all says so before being asked for heads.
                if let Some(missing) = VIT_TENSORS.iter().find(|name| ckpt.get(name).is_none()) {
                    return Err(Error::format(
                        what,
                        format!("it has no `{missing}`, so it is not a ViT model (timm VisionTransformer names)"),
                    ));
                }
                return Err(Error::format(
                    what,
                    "it does not say how many attention heads the model has (a timm file?); pass --heads N, \
                     or write a file that records it with `autoprog export --checkpoint FILE --heads N --out MODEL`",
                ));
            }
        };
        // The file is what is wrong when its architecture is: name it.
        config.validate().map_err(|e| Error::format(what, e.to_string()))?;
        let prefix = match options.ema {
            Some(decay) => ema_prefix(decay),
            None => String::new(),
        };
        if !prefix.is_empty() && ckpt.get(&format!("{prefix}head.weight")).is_none() {
            return Err(Error::format(
                what,
                format!(
                    "it has no EMA with decay {}; leave out --ema or pick a decay it was trained with",
                    options.ema.unwrap_or(0.0)
                ),
            ));
        }
        let depth = ckpt.get_json::<usize>(meta::DEPTH)?.unwrap_or(config.depth);
        // Checked before laying out `depth` blocks: a damaged header must not allocate them.
        let present = blocks_present(ckpt, &prefix, config.depth + 1);
        if depth != present || depth > config.depth {
            return Err(Error::format(
                what,
                format!(
                    "its header says {depth} blocks (of at most {}) but it holds weights for {present}; \
                     the file is damaged or was edited",
                    config.depth
                ),
            ));
        }
        // Offsets are usize: on wasm32 a model within every limit can still be too large to lay out.
        let parameters = parameter_count(&config, depth);
        if parameters > (isize::MAX as u64) / 4 {
            return Err(Error::format(
                what,
                format!("it describes a model of {parameters} parameters, more than this platform can address"),
            ));
        }
        let layout = ParamLayout::new(&config, depth, 1);
        let arena = layout
            .arena_from(ckpt, &prefix)
            .map_err(|e| Error::format(what, format!("it does not fit the model it describes: {e}")))?;
        let classes = match ckpt.get_json::<Vec<String>>(meta::CLASSES)? {
            Some(names) if names.len() == config.classes => names,
            Some(names) => {
                return Err(Error::format(
                    what,
                    format!("it names {} classes but its head has {}", names.len(), config.classes),
                ))
            }
            None => (0..config.classes).map(|i| i.to_string()).collect(),
        };
        let mean = options.mean.or(ckpt.get_json(meta::MEAN)?).unwrap_or(IMAGENET_MEAN);
        let std = options.std.or(ckpt.get_json(meta::STD)?).unwrap_or(IMAGENET_STD);
        if std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(Error::format(what, format!("normalisation std {std:?} must be positive")));
        }
        Ok(InferenceModel { config, depth, classes, mean, std, weights: layout.to_tensors(&arena, "") })
    }

    /// Parses a safetensors file's bytes and reads the model out of it.
    pub fn from_bytes(bytes: &[u8], what: &str, options: &LoadOptions) -> Result<InferenceModel> {
        InferenceModel::from_checkpoint(&Checkpoint::from_bytes(bytes, what)?, what, options)
    }

    /// The parameter layout of these weights, offsets aligned to `align` floats.
    pub fn layout(&self, align: usize) -> ParamLayout {
        ParamLayout::new(&self.config, self.depth, align)
    }

    /// The weights as a flat arena of `layout`.
    pub fn arena(&self, layout: &ParamLayout) -> Result<Vec<f32>> {
        let ckpt = Checkpoint { tensors: self.weights.clone(), metadata: Default::default() };
        layout.arena_from(&ckpt, "")
    }

    /// A self-describing model file: the weights under timm names (so timm loads it too)
    /// and, in the header, the architecture, depth, classes and normalisation.
    pub fn to_model_file(&self, storage: Storage) -> Result<Vec<u8>> {
        self.to_checkpoint()?.to_bytes_as(storage)
    }

    /// [`InferenceModel::to_model_file`] before serialisation, for callers that add metadata.
    pub fn to_checkpoint(&self) -> Result<Checkpoint> {
        let mut ckpt = Checkpoint { tensors: self.weights.clone(), metadata: Default::default() };
        ckpt.set_json(meta::FORMAT, MODEL_FORMAT)?;
        ckpt.set_json(meta::VIT, &self.config)?;
        ckpt.set_json(meta::DEPTH, &self.depth)?;
        ckpt.set_json(meta::CLASSES, &self.classes)?;
        ckpt.set_json(meta::MEAN, &self.mean)?;
        ckpt.set_json(meta::STD, &self.std)?;
        Ok(ckpt)
    }

    /// The number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.weights.iter().map(|t| t.numel()).sum()
    }
}

/// Softmax of one row of logits, in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes of `probs`, most probable first (ties: lower index first).
pub fn top_k(probs: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// One of the most probable classes of a prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopClass {
    pub class: usize,
    /// The class's name.
    pub label: String,
    pub prob: f64,
}

/// The `k` most probable classes of one row of `logits`, named from `classes`.
pub fn top_classes(logits: &[f32], classes: &[String], k: usize) -> Vec<TopClass> {
    let probs = softmax(logits);
    top_k(&probs, k)
        .into_iter()
        .map(|c| TopClass { class: c, label: classes.get(c).cloned().unwrap_or_else(|| c.to_string()), prob: probs[c] })
        .collect()
}

/// How much the class token attends to each patch in one block, averaged over the heads:
/// softmax(q_cls · k_j · scale) over all N tokens, returned for the N − 1 patches in
/// row-major grid order. `qkv` is that block's [N, 3C] projection of one image (q, k, v
/// blocks of C, heads contiguous inside each, as timm's reshape).
pub fn class_token_attention<T: Copy + Into<f64>>(
    qkv: &[T],
    tokens: usize,
    heads: usize,
    head_size: usize,
) -> Vec<f64> {
    let c = heads * head_size;
    let scale = 1.0 / (head_size as f64).sqrt();
    let mut map = vec![0.0; tokens.saturating_sub(1)];
    for h in 0..heads {
        let q = &qkv[h * head_size..][..head_size];
        let scores: Vec<f64> = (0..tokens)
            .map(|j| {
                let k = &qkv[j * 3 * c + c + h * head_size..][..head_size];
                q.iter().zip(k).map(|(&a, &b)| a.into() * b.into()).sum::<f64>() * scale
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        for (m, e) in map.iter_mut().zip(&exp[1..]) {
            *m += e / sum / heads as f64;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VitConfig {
        VitConfig {
            image_size: 8,
            patch_size: 4,
            in_chans: 3,
            dim: 8,
            depth: 2,
            heads: 2,
            mlp_hidden: 16,
            classes: 3,
            ..VitConfig::preset("nano", 3).unwrap()
        }
    }

    fn checkpoint(config: &VitConfig) -> Checkpoint {
        let layout = ParamLayout::new(config, config.depth, 1);
        let arena = layout.init(config, 7);
        let mut ckpt = Checkpoint { tensors: layout.to_tensors(&arena, ""), metadata: Default::default() };
        ckpt.tensors.extend(layout.to_tensors(&arena.iter().map(|v| v * 0.5).collect::<Vec<_>>(), "ema_0.99."));
        ckpt.set_json("vit", config).unwrap();
        ckpt.set_json("classes", &["a", "b", "c"]).unwrap();
        ckpt.set_json("mean", &[0.5f32; 3]).unwrap();
        ckpt.set_json("std", &[0.25f32; 3]).unwrap();
        ckpt
    }

    #[test]
    fn a_model_file_reads_back_as_the_same_model() {
        let config = tiny();
        let ckpt = checkpoint(&config);
        let ema = InferenceModel::from_checkpoint(&ckpt, "c", &LoadOptions { ema: Some(0.99), ..Default::default() })
            .unwrap();
        let plain = InferenceModel::from_checkpoint(&ckpt, "c", &LoadOptions::default()).unwrap();
        assert_eq!(ema.weights[0].data[0], 0.5 * plain.weights[0].data[0]);
        let bytes = ema.to_model_file(Storage::F32).unwrap();
        let back = InferenceModel::from_bytes(&bytes, "model", &LoadOptions::default()).unwrap();
        assert_eq!(back.config, ema.config);
        assert_eq!(back.classes, ["a", "b", "c"]);
        assert_eq!((back.mean, back.std), ([0.5; 3], [0.25; 3]));
        assert_eq!(back.weights, ema.weights);
        let file = Checkpoint::from_bytes(&bytes, "model").unwrap();
        assert_eq!(file.get_json::<String>("format").unwrap().as_deref(), Some(MODEL_FORMAT));
        assert!(file.get("ema_0.99.head.weight").is_none(), "a model file holds one set of weights");
    }

    #[test]
    fn missing_heads_ema_and_class_names_are_explained() {
        let config = tiny();
        let mut ckpt = checkpoint(&config);
        let err = InferenceModel::from_checkpoint(&ckpt, "c", &LoadOptions { ema: Some(0.5), ..Default::default() });
        assert!(err.unwrap_err().to_string().contains("no EMA with decay 0.5"));
        ckpt.set_json("classes", &["a"]).unwrap();
        let err = InferenceModel::from_checkpoint(&ckpt, "c", &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("1 classes") && err.contains("has 3"), "{err}");
        ckpt.metadata.clear();
        let err = InferenceModel::from_checkpoint(&ckpt, "c", &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("--heads"), "{err}");
        // A file that is no ViT at all says so instead of asking for heads.
        let foreign = Checkpoint { tensors: vec![NamedTensor::new("foo", vec![1], vec![0.0])], ..Default::default() };
        let err = InferenceModel::from_checkpoint(&foreign, "c", &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("patch_embed") && !err.contains("--heads"), "{err}");
        // A header whose depth disagrees with the weights is refused before any layout.
        let mut deep = checkpoint(&config);
        deep.set_json("depth", &1_000_000_000usize).unwrap();
        let err = InferenceModel::from_checkpoint(&deep, "c", &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("1000000000 blocks") && err.contains("holds weights for 2"), "{err}");
    }

    #[test]
    fn class_token_attention_is_a_distribution_that_follows_the_keys() {
        // 1 head of size 2, 3 tokens: the class query points along the second patch's key.
        let qkv: Vec<f32> = vec![
            1.0, 0.0, /* k */ 0.0, 0.0, /* v */ 0.0, 0.0, // class token
            0.0, 0.0, /* k */ 0.0, 0.0, /* v */ 0.0, 0.0, // patch 0
            0.0, 0.0, /* k */ 4.0, 0.0, /* v */ 0.0, 0.0, // patch 1
        ];
        let map = class_token_attention(&qkv, 3, 1, 2);
        let scale = 1.0 / 2f64.sqrt();
        let e = (4.0 * scale).exp();
        assert!((map[0] - 1.0 / (2.0 + e)).abs() < 1e-12 && (map[1] - e / (2.0 + e)).abs() < 1e-12, "{map:?}");
        assert_eq!(top_k(&softmax(&[0.0, 2.0, 1.0]), 2), [1, 2]);
        let names = ["a".to_string(), "b".to_string(), "c".to_string()];
        let top = top_classes(&[0.0, 2.0, 1.0], &names, 1);
        assert_eq!((top[0].class, top[0].label.as_str()), (1, "b"));
        assert!((top[0].prob - 2f64.exp() / (1.0 + 2f64.exp() + 1f64.exp())).abs() < 1e-12);
    }
}
