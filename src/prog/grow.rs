//! MoGrow's depth growth: new layer i copies old layer `mapping[i]` (interleaved
//! duplication, the official `new_idx`: when the depth does not double, the last old
//! layers are the ones duplicated), the elastic supernet built from it, whose sub-network
//! of depth l keeps every original layer and the last l − L_old duplicates, and parameter
//! recycling: a sub-network extracted from the supernet as a model of its own.

use serde::{Deserialize, Serialize};

use crate::model::ParamLayout;
use crate::{Error, Result};

/// How a model of `from` blocks grows into one of `to` blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Growth {
    pub from: usize,
    pub to: usize,
    /// New block i starts as a copy of old block `mapping[i]`.
    pub mapping: Vec<usize>,
    /// Whether new block i is a duplicate (the second copy of its source).
    pub duplicate: Vec<bool>,
}

/// The growth from `from` to `to` blocks, `from ≤ to ≤ 2·from` (as the official code
/// requires: each old block is copied at most once more).
pub fn grow_depth(from: usize, to: usize) -> Result<Growth> {
    if from == 0 || to < from || to > 2 * from {
        return Err(Error::invalid(
            "depth growth",
            format!("from {from} to {to} blocks; MoGrow grows a depth of at least 1 to at most twice itself"),
        ));
    }
    let extra = to - from;
    let first_duplicated = from - extra;
    let mut mapping = Vec::with_capacity(to);
    let mut duplicate = Vec::with_capacity(to);
    for old in 0..from {
        mapping.push(old);
        duplicate.push(false);
        if old >= first_duplicated {
            mapping.push(old);
            duplicate.push(true);
        }
    }
    Ok(Growth { from, to, mapping, duplicate })
}

impl Growth {
    /// The blocks of the supernet (of `self.to` blocks) that a sub-network of `depth`
    /// blocks runs, in order: every original block and the last `depth − from`
    /// duplicates; the other duplicates are skipped (identity, the residual path alone).
    /// At `depth = from` this computes exactly the model before growth.
    pub fn active(&self, depth: usize) -> Result<Vec<usize>> {
        if depth < self.from || depth > self.to {
            return Err(Error::invalid(
                "elastic depth",
                format!("a sub-network of {depth} blocks of a supernet grown from {} to {}", self.from, self.to),
            ));
        }
        let duplicates: Vec<usize> = (0..self.to).filter(|&i| self.duplicate[i]).collect();
        let keep = &duplicates[duplicates.len() - (depth - self.from)..];
        Ok((0..self.to).filter(|i| !self.duplicate[*i] || keep.contains(i)).collect())
    }
}

/// An arena laid out by `to` whose block i is `from`'s block `source[i]`; every tensor
/// outside the blocks (embeddings, final norm, head) is copied as is. With a growth's
/// `mapping` this is MoGrow (for the weights, each EMA and, if kept, the AdamW moments);
/// with a sub-network's active blocks it is parameter recycling: the sub-network extracted
/// from the supernet as a model of its own.
pub fn remap_blocks(from: &ParamLayout, to: &ParamLayout, source: &[usize], arena: &[f32]) -> Result<Vec<f32>> {
    let mut out = vec![0.0; to.len];
    for spec in &to.specs {
        let source_name = match spec.name.strip_prefix("blocks.") {
            Some(rest) => {
                let (index, tail) = rest.split_once('.').expect("block parameter names are blocks.{i}.{name}");
                let i: usize = index.parse().expect("block index");
                let from_block = *source.get(i).ok_or_else(|| {
                    Error::invalid(
                        "block mapping",
                        format!("{} source blocks for a model with block {i}", source.len()),
                    )
                })?;
                format!("blocks.{from_block}.{tail}")
            }
            None => spec.name.clone(),
        };
        let source = from.find(&source_name).filter(|s| s.shape == spec.shape).ok_or_else(|| {
            Error::invalid("block mapping", format!("the source model has no {source_name} of shape {:?}", spec.shape))
        })?;
        out[spec.range()].copy_from_slice(&arena[source.range()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VitConfig;

    #[test]
    fn grown_arenas_copy_blocks_by_the_mapping() {
        let config = VitConfig::preset("nano", 10).unwrap();
        let (small, large) = (ParamLayout::new(&config, 3, 16), ParamLayout::new(&config, 5, 16));
        let arena: Vec<f32> = (0..small.len).map(|i| i as f32).collect();
        let growth = grow_depth(3, 5).unwrap();
        let grown = remap_blocks(&small, &large, &growth.mapping, &arena).unwrap();
        for (i, &source) in growth.mapping.iter().enumerate() {
            let name = |b: usize| format!("blocks.{b}.mlp.fc1.weight");
            assert_eq!(large.slice(&grown, &name(i)), small.slice(&arena, &name(source)));
        }
        assert_eq!(large.slice(&grown, "pos_embed"), small.slice(&arena, "pos_embed"));
        assert_eq!(large.slice(&grown, "head.weight"), small.slice(&arena, "head.weight"));
        // Recycling the depth-4 sub-network of the 3 -> 5 supernet gives back a 4-block model
        // whose blocks are the ones that sub-network ran.
        let active = growth.active(4).unwrap();
        let four = ParamLayout::new(&config, 4, 16);
        let sub = remap_blocks(&large, &four, &active, &grown).unwrap();
        for (j, &i) in active.iter().enumerate() {
            let name = |b: usize| format!("blocks.{b}.attn.qkv.bias");
            assert_eq!(four.slice(&sub, &name(j)), large.slice(&grown, &name(i)));
        }
        assert!(remap_blocks(&large, &four, &active[..2], &grown).is_err());
    }

    #[test]
    fn mappings_match_the_official_new_idx() {
        let cases: [(usize, usize, &[usize], &[usize]); 5] = [
            (9, 18, &[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8], &[1, 3, 5, 7, 9, 11, 13, 15, 17]),
            (9, 12, &[0, 1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8], &[7, 9, 11]),
            (6, 12, &[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], &[1, 3, 5, 7, 9, 11]),
            (6, 8, &[0, 1, 2, 3, 4, 4, 5, 5], &[5, 7]),
            (10, 12, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9], &[9, 11]),
        ];
        for (from, to, mapping, new) in cases {
            let g = grow_depth(from, to).unwrap();
            assert_eq!(g.mapping, mapping, "{from}->{to}");
            let dup: Vec<usize> = (0..to).filter(|&i| g.duplicate[i]).collect();
            assert_eq!(dup, new, "{from}->{to}");
        }
        assert_eq!(grow_depth(4, 4).unwrap().mapping, [0, 1, 2, 3]);
        assert!(grow_depth(3, 7).is_err() && grow_depth(4, 3).is_err() && grow_depth(0, 1).is_err());
    }

    #[test]
    fn supernet_sub_networks_enable_the_last_duplicates() {
        // The official 6 -> 12 supernet.
        let g = grow_depth(6, 12).unwrap();
        assert_eq!(g.active(6).unwrap(), [0, 2, 4, 6, 8, 10]);
        assert_eq!(g.active(8).unwrap(), [0, 2, 4, 6, 8, 9, 10, 11]);
        assert_eq!(g.active(10).unwrap(), [0, 2, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(g.active(12).unwrap(), (0..12).collect::<Vec<_>>());
        // The shallowest sub-network runs the old blocks in their old order.
        for (from, to) in [(3, 5), (9, 12), (6, 8)] {
            let g = grow_depth(from, to).unwrap();
            let old: Vec<usize> = g.active(from).unwrap().iter().map(|&i| g.mapping[i]).collect();
            assert_eq!(old, (0..from).collect::<Vec<_>>());
        }
        assert!(g.active(5).is_err() && g.active(13).is_err());
    }
}
