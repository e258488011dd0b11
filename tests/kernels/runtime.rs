//! The GPU runtime: pooling, elastic reuse of pipelines, error paths.

use autoprog::kernels::attention::{self, AttentionOptions};
use autoprog::kernels::matmul::{self, Config, Epilogue, Layout};
use autoprog::{ContextOptions, Error, GpuContext};

use crate::common::*;

#[test]
fn sub_networks_reuse_the_same_pipelines() {
    // One attention and one linear layer at three token counts (three resolutions of
    // one supernet) and with and without token and head masks: after the first
    // sub-network, nothing new is compiled. Its own context: other tests compile
    // pipelines in the shared one concurrently.
    let owned = GpuContext::new_blocking(&ContextOptions::default()).expect("adapter");
    let c = &owned;
    let (heads, head_size) = (2, 8);
    let width = heads * head_size;
    let record = |tokens: usize, masked: bool| {
        let batch = 2;
        let qkv = c.zeros(&[batch, tokens, 3 * width], "qkv").unwrap();
        let out = c.empty(&[batch, tokens, width], "out").unwrap();
        let lse = c.empty(&[batch, heads, tokens], "lse").unwrap();
        let keep: Vec<u32> = (0..batch * tokens).map(|i| (i % 3 != 0) as u32).collect();
        let key_mask = c.upload_u32(&keep, &[batch, tokens], "keep").unwrap();
        let head_mask = c.upload_u32(&[1, 0], &[heads], "heads").unwrap();
        let w = c.zeros(&[width, width], "w").unwrap();
        let y = c.empty(&[batch * tokens, width], "y").unwrap();
        let mut opts = AttentionOptions::new(0.3);
        if masked {
            opts = opts.with_key_mask(&key_mask).with_head_mask(&head_mask);
        }
        let mut rec = c.recorder("sub-network");
        attention::attention_forward(&mut rec, &qkv, &opts, &out, &lse).unwrap();
        let x = out.reshape(&[batch * tokens, width]).unwrap();
        let epilogue = Epilogue::default();
        matmul::matmul_with(&mut rec, Layout::NT, Config::register(16, 16, 8), &x, &w, &y, &epilogue).unwrap();
        c.submit(rec).unwrap();
    };
    record(17, false);
    record(17, true);
    let compiled = c.pipeline_count();
    for tokens in [5, 17, 65] {
        for masked in [false, true] {
            record(tokens, masked);
        }
    }
    assert_eq!(c.pipeline_count(), compiled, "a sub-network compiled new pipelines");
}

#[test]
fn pooled_buffers_are_reused() {
    let c = GpuContext::new_blocking(&ContextOptions::default()).expect("adapter");
    let first = c.empty(&[1000], "a").unwrap();
    drop(first);
    assert_eq!(c.pool_stats().0, 1);
    let _again = c.empty(&[990], "b").unwrap();
    assert_eq!(c.pool_stats().0, 0, "a same-bucket allocation should take the pooled buffer");
    c.trim_pool();
}

#[test]
fn unknown_backend_and_missing_adapter_are_errors_not_panics() {
    let err = GpuContext::new_blocking(&ContextOptions {
        backend: Some("glide".into()),
        adapter: None,
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(matches!(err, Error::UnknownBackend(_)), "{err}");
    let err = GpuContext::new_blocking(&ContextOptions {
        backend: None,
        adapter: Some("no-such-gpu".into()),
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("no-such-gpu") && err.to_string().contains("available"), "{err}");
}

#[test]
fn writes_aliasing_a_read_are_rejected() {
    let c = ctx();
    let x = c.zeros(&[8], "x").unwrap();
    let mut rec = c.recorder("alias");
    let err = autoprog::kernels::gelu::gelu_forward(&mut rec, &x, &x).unwrap_err().to_string();
    assert!(err.contains("share a buffer"), "{err}");
}

#[test]
fn views_that_a_browser_cannot_bind_are_refused_everywhere() {
    let c = ctx();
    // Arena offsets follow WebGPU's portable alignment whatever this adapter allows.
    assert_eq!(c.arena_align() * 4 % autoprog::gpu::PORTABLE_OFFSET_ALIGN as usize, 0);
    let arena = c.zeros(&[2 * c.arena_align()], "grads").unwrap();
    let partial = upload(&[1.0; 10], &[2, 5]);
    let (aligned, unaligned) = (arena.view(0, &[5]).unwrap(), arena.view(32, &[5]).unwrap());
    let mut rec = c.recorder("unaligned");
    let err =
        autoprog::kernels::layernorm::layernorm_param_grad(&mut rec, &partial, &partial, &aligned, &unaligned, false)
            .unwrap_err()
            .to_string();
    assert!(err.contains("binding 3 starts at byte 128") && err.contains("multiple of"), "{err}");
}

#[test]
fn disjoint_written_views_of_one_arena_share_a_dispatch() {
    let c = ctx();
    let align = c.arena_align();
    let cols = 5;
    // dgamma and dbeta of one LayerNorm, as views of one gradient arena.
    let arena = c.zeros(&[2 * align], "grads").unwrap();
    let (dgamma, dbeta) = (arena.view(0, &[cols]).unwrap(), arena.view(align, &[cols]).unwrap());
    let partial_g = upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0], &[2, cols]);
    let partial_b = upload(&[0.5; 10], &[2, cols]);
    run(|rec| autoprog::kernels::layernorm::layernorm_param_grad(rec, &partial_g, &partial_b, &dgamma, &dbeta, false));
    assert_eq!(read(&dgamma), [11.0, 22.0, 33.0, 44.0, 55.0]);
    assert_eq!(read(&dbeta), [1.0; 5]);
    // Overlapping written views are a race and are refused.
    let overlapping = arena.view(0, &[cols]).unwrap();
    let mut rec = c.recorder("overlap");
    let err = autoprog::kernels::layernorm::layernorm_param_grad(
        &mut rec,
        &partial_g,
        &partial_b,
        &dgamma,
        &overlapping,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("share a buffer"), "{err}");
}

#[test]
fn timed_recordings_report_every_dispatch() {
    let c = ctx();
    let x = c.zeros(&[4096], "x").unwrap();
    let y = c.empty(&[4096], "y").unwrap();
    let mut rec = c.timed_recorder("timed");
    for _ in 0..3 {
        autoprog::kernels::gelu::gelu_forward(&mut rec, &x, &y).unwrap();
    }
    let timing = pollster::block_on(c.submit_timed(rec)).unwrap();
    if c.has(wgpu::Features::TIMESTAMP_QUERY) {
        assert_eq!(timing.passes.len(), 3);
        let kernels = timing.by_kernel();
        assert_eq!(kernels.len(), 1);
        assert_eq!(kernels[0].2, 3);
        assert!(kernels[0].1 >= 0.0 && (kernels[0].1 - timing.total_ms()).abs() < 1e-9);
    } else {
        assert!(timing.passes.is_empty());
    }
}

/// Rank 1 of two, with rank 0's arenas given: `drifted` says whether rank 0's checksums
/// differ from this rank's (the maximum over the ranks then differs from this rank's own).
struct SecondRank {
    rank0: Vec<Vec<f32>>,
    drifted: bool,
    broadcasts: std::cell::Cell<usize>,
}

impl autoprog::train::Collective for SecondRank {
    fn rank(&self) -> usize {
        1
    }
    fn ranks(&self) -> usize {
        2
    }
    fn adapters(&self) -> Vec<String> {
        vec![String::new(); 2]
    }
    fn sum_f32(&self, _values: &mut [f32]) -> anyhow::Result<()> {
        unreachable!("not used by the alignment")
    }
    fn sum_f64(&self, _values: &mut [f64]) -> anyhow::Result<()> {
        unreachable!("not used by the alignment")
    }
    fn max_f64(&self, values: &mut [f64]) -> anyhow::Result<()> {
        if self.drifted {
            values.iter_mut().for_each(|v| *v = v.abs() + 1.0);
        }
        Ok(())
    }
    fn broadcast_f64(&self, values: &mut [f64]) -> anyhow::Result<()> {
        let from = &self.rank0[self.broadcasts.get()];
        self.broadcasts.set(self.broadcasts.get() + 1);
        values.iter_mut().zip(from).for_each(|(v, &x)| *v = x as f64);
        Ok(())
    }
}

#[test]
fn data_parallel_ranks_that_drifted_apart_take_rank_0s_state_and_split_decisions_fail() {
    use autoprog::train::collective::{align_with_rank_0, check_agreement};
    let c = ctx();
    let mine = [vec![1.0f32, 2.0, 3.0], vec![0.5; 5]];
    let rank0 = vec![vec![1.0f32, 2.0, 3.0000002], vec![0.25; 5]];
    for drifted in [false, true] {
        let arenas: Vec<_> = mine.iter().map(|v| c.upload(v, &[v.len()], "arena").unwrap()).collect();
        let peer = SecondRank { rank0: rank0.clone(), drifted, broadcasts: Default::default() };
        let refs: Vec<_> = arenas.iter().collect();
        let aligned = pollster::block_on(align_with_rank_0(c, &peer, &refs)).unwrap();
        assert_eq!(aligned, drifted);
        for (arena, (own, theirs)) in arenas.iter().zip(mine.iter().zip(&rank0)) {
            let now = c.read_blocking(arena).unwrap();
            assert_eq!(&now, if drifted { theirs } else { own }, "drifted: {drifted}");
        }
        assert_eq!(peer.broadcasts.get(), if drifted { 2 } else { 0 });
        // A decision the ranks do not share is an error, not a resync.
        let agreed = check_agreement(&peer, "the search's choice", &[24.0, 6.0]);
        assert_eq!(agreed.is_err(), drifted, "{agreed:?}");
    }
}
