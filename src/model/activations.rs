//! Every activation and scratch buffer of a training step at one (batch, resolution), and
//! which blocks of the model the passes run (the elastic sub-network).

use crate::gpu::{GpuContext, Owner, Tensor};
use crate::{Error, Result};

/// One block's saved activations.
pub(super) struct BlockActs {
    pub(super) ln1: Tensor,   // [B, N, C]
    pub(super) mean1: Tensor, // [B·N]
    pub(super) rstd1: Tensor, // [B·N]
    pub(super) qkv: Tensor,   // [B, N, 3C]
    pub(super) attn: Tensor,  // [B, N, C]
    pub(super) lse: Tensor,   // [B, NH, N]
    pub(super) x_mid: Tensor, // [B, N, C]
    pub(super) ln2: Tensor,
    pub(super) mean2: Tensor,
    pub(super) rstd2: Tensor,
    pub(super) pre: Tensor, // [B, N, H]
    pub(super) act: Tensor, // [B, N, H]
}

/// Buffers for the position embedding at a resolution other than the stored grid's.
pub(super) struct PosResize {
    pub(super) grid: Tensor, // [G, G, C] the stored grid, copied out (its offset need not be aligned)
    pub(super) resized: Tensor, // [G2, G2, C]
    pub(super) dgrid: Tensor, // [G, G, C]
    pub(super) pos: Tensor,  // [N, C] class position + resized grid
    pub(super) dpos: Tensor, // [N, C]
    /// The patches' rows of `dpos`, copied out: a view of them would start at byte 4C, which
    /// is not an offset every adapter can bind.
    pub(super) dresized: Tensor, // [G2, G2, C]
}

/// Every activation and scratch buffer of a step at one (batch, resolution), allocated once
/// and reused by every step of that shape.
pub struct Activations {
    pub batch: usize,
    pub resolution: usize,
    /// N: patch tokens + the class token.
    pub tokens: usize,
    /// Normalised input images [B, Ch, R, R]; the trainer writes each batch here.
    pub images: Tensor,
    /// Hard labels [B] (u32).
    pub labels: Tensor,
    /// Soft targets [B, K] (mixup / cutmix).
    pub targets: Tensor,
    /// Drop-path factors, one row of B per (block, branch), rows `drop_stride` apart so
    /// that each is a storage view; write them with [`Activations::write_drop_path`].
    pub(super) drop_scales: Tensor,
    pub(super) drop_stride: usize,
    /// [B, K]
    pub logits: Tensor,
    /// Mean loss of the batch [1].
    pub loss: Tensor,
    pub(super) patches: Tensor,    // [B·Np, Ch·P·P]
    pub(super) tokens_out: Tensor, // [B·Np, C]
    pub(super) xs: Vec<Tensor>,    // L + 1 of [B, N, C]: the residual stream before each block and after the last
    pub(super) blocks: Vec<BlockActs>,
    pub(super) cls: Tensor,       // [B, C]
    pub(super) cls_norm: Tensor,  // [B, C]
    pub(super) mean_f: Tensor,    // [B]
    pub(super) rstd_f: Tensor,    // [B]
    pub(super) loss_rows: Tensor, // [B]
    pub(super) dlogits: Tensor,   // [B, K]
    pub(super) dcls_norm: Tensor, // [B, C]
    pub(super) dcls: Tensor,      // [B, C]
    pub(super) dx: Tensor,        // [B, N, C]
    pub(super) dx_mid: Tensor,    // [B, N, C]
    pub(super) dtmp: Tensor,      // [B, N, C]
    pub(super) dbranch: Tensor,   // [B, N, C]
    pub(super) dattn: Tensor,     // [B, N, C]
    pub(super) dln: Tensor,       // [B, N, C]
    pub(super) dqkv: Tensor,      // [B, N, 3C]
    pub(super) dpre: Tensor,      // [B, N, H]
    pub(super) dtokens: Tensor,   // [B, Np, C]
    pub(super) pos: Option<PosResize>,
    /// The blocks the forward and backward passes run, in order (an elastic sub-network of
    /// the model; every block by default). Skipped blocks are the identity.
    pub(super) active: Vec<usize>,
    /// Identifies these buffers to the step plans that bind them.
    pub(crate) owner: Owner,
}

/// Which loss the step trains on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Hard labels from `Activations::labels` with label smoothing.
    Hard { smoothing: f32 },
    /// Soft targets from `Activations::targets` (already smoothed and mixed).
    Soft,
    /// Soft targets for the first `rows` images of the batch only: a batch short of images
    /// (files that failed to load) padded to the planned size with rows whose targets are
    /// all zero. Such a row has zero loss and zero gradient (dlogits = p·Σt − t = 0), so the
    /// step is exactly that of the `rows` images, with the mean taken over them.
    Partial { rows: usize },
}

impl Activations {
    /// Runs only `blocks` (increasing block indices) from now on: the elastic sub-network
    /// of the supernet that skips the others. The same pipelines serve every sub-network.
    pub fn set_active_blocks(&mut self, blocks: &[usize]) -> Result<()> {
        let depth = self.blocks.len();
        if blocks.windows(2).any(|w| w[0] >= w[1]) || blocks.last().is_some_and(|&b| b >= depth) {
            return Err(Error::invalid(
                "elastic depth",
                format!("blocks {blocks:?}: need increasing indices below the model's {depth} blocks"),
            ));
        }
        self.active = blocks.to_vec();
        Ok(())
    }

    /// The blocks the passes run.
    pub fn active_blocks(&self) -> &[usize] {
        &self.active
    }

    /// The last block's q, k, v projection [B, N, 3C] of the latest forward pass (the
    /// input of attention maps); `None` for a model without blocks.
    pub fn last_block_qkv(&self) -> Option<&Tensor> {
        self.blocks.get(self.active.len().checked_sub(1)?).map(|b| &b.qkv)
    }

    /// Writes this step's drop-path factors, `scales[(2·block + branch)·B + b]` as in
    /// [`crate::model::cpu::DropPath`].
    pub fn write_drop_path(&self, ctx: &GpuContext, scales: &[f32]) -> Result<()> {
        let rows = self.drop_scales.numel() / self.drop_stride;
        if scales.len() != rows * self.batch {
            return Err(Error::shape(
                "drop path",
                format!("{} factors for {rows} branches of a batch of {}", scales.len(), self.batch),
            ));
        }
        let mut padded = vec![1.0; self.drop_scales.numel()];
        for (row, chunk) in scales.chunks(self.batch).enumerate() {
            padded[row * self.drop_stride..][..self.batch].copy_from_slice(chunk);
        }
        ctx.write(&self.drop_scales, &padded)
    }
}
