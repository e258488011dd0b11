//! The training step's recorded plans: the host records a sub-network's step once (its
//! forward, loss, backward, clipping, AdamW and EMA dispatches with their bind groups and
//! parameters) and replays it for every later step of that sub-network. What changes from
//! step to step is data: the batch and the drop-path factors in the activations, AdamW's
//! learning rate and bias corrections in a table the step writes
//! ([`crate::kernels::optimizer::adamw_update_grouped`]).
//!
//! A plan is keyed by what it bound (the model and the activations, through their
//! [`crate::gpu::Owner`]s, and the blocks that run) and by the constants its parameters hold (loss, loss
//! scale, clipping norm, AdamW's betas, eps and weight decay). A new key drops the plans of
//! another model or other constants, and every plan whose model or activations are gone: so
//! a growing model or a new stage leaves none behind, and a search holds one plan per
//! sub-network it samples.

use std::sync::Arc;

use crate::gpu::{Plan, Watch};
use crate::model::{Activations, GpuVit, Loss};

/// Setting this environment variable to `0` records every step afresh (for comparisons).
pub const STEP_PLANS_ENV: &str = "AUTOPROG_STEP_PLANS";

/// What a recorded step bound, and the constants in its parameters.
#[derive(Clone, Debug)]
pub(super) struct StepKey {
    model: Watch,
    acts: Watch,
    active: Vec<usize>,
    drop_path: bool,
    loss: Loss,
    /// Loss scale, clipping norm, and AdamW's betas, eps and weight decay, as bits.
    constants: [u64; 6],
}

impl StepKey {
    /// `constants`: the loss scale, clipping norm, and AdamW's betas, eps and weight decay,
    /// as bits.
    pub(super) fn new(model: &GpuVit, acts: &Activations, drop_path: bool, loss: Loss, constants: [u64; 6]) -> StepKey {
        StepKey {
            model: model.owner.watch(),
            acts: acts.owner.watch(),
            active: acts.active_blocks().to_vec(),
            drop_path,
            loss,
            constants,
        }
    }

    fn same(&self, other: &StepKey) -> bool {
        self.same_model(other)
            && self.acts.same(&other.acts)
            && self.active == other.active
            && self.drop_path == other.drop_path
            && self.loss == other.loss
    }

    /// Whether both plans could stay cached side by side (one model, the same constants).
    fn same_model(&self, other: &StepKey) -> bool {
        self.model.same(&other.model) && self.constants == other.constants
    }
}

/// The cached step plans of one optimizer.
pub struct StepPlans {
    plans: Vec<(StepKey, Arc<Plan>)>,
    /// Replay plans (the default); off, every step is recorded afresh.
    pub enabled: bool,
}

impl Default for StepPlans {
    /// Enabled unless [`STEP_PLANS_ENV`] is `0`.
    fn default() -> Self {
        let enabled = std::env::var(STEP_PLANS_ENV).map_or(true, |v| v != "0");
        StepPlans { plans: Vec::new(), enabled }
    }
}

impl StepPlans {
    /// Plans held.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Drops every plan (their tensors go back to the pool).
    pub fn clear(&mut self) {
        self.plans.clear();
    }

    pub(super) fn get(&self, key: &StepKey) -> Option<Arc<Plan>> {
        self.plans.iter().find(|(k, _)| k.same(key)).map(|(_, plan)| plan.clone())
    }

    /// Caches `plan` under `key`, dropping the plans it replaces (see the module doc).
    pub(super) fn insert(&mut self, key: StepKey, plan: Arc<Plan>) {
        self.plans.retain(|(k, _)| k.same_model(&key) && k.acts.alive() && !k.same(&key));
        self.plans.push((key, plan));
    }
}
